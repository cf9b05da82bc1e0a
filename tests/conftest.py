"""Shared fixtures: one token cache per test session, and tiny trained runs reused across tests."""

from __future__ import annotations

import os

import pytest
import torch

# --precision auto may pick bf16 on a CPU with AMX-bf16: the suite computes the same numbers on every CPU in fp32
os.environ["DLM_AUTO_PRECISION"] = "fp32"


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Tokenizer and token caches in a per-session folder (inherited by CLI subprocesses)."""
    path = tmp_path_factory.mktemp("dlm-cache")
    old = os.environ.get("DLM_CACHE_DIR")
    os.environ["DLM_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DLM_CACHE_DIR", None)
    else:
        os.environ["DLM_CACHE_DIR"] = old


def _train_tiny(out, objective: str, steps: int = 40):
    from dlm.presets import preset_config
    from dlm.train.loop import train

    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.max_steps, cfg.train.precision = objective, steps, "fp32"
    train(cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_mdlm_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory.mktemp("runs") / "mdlm", "mdlm")


@pytest.fixture(scope="session")
def tiny_ar_run(tmp_path_factory):
    return _train_tiny(tmp_path_factory.mktemp("runs") / "ar", "ar")


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
