"""Objectives as configured objects: the run config's objective section (overrides, strictness, config.json), the
migration of format-1 config.json files, and the one Monte Carlo loop. What every registry entry promises is
tests/contracts/test_objective_contracts.py."""

import dataclasses
import json

import pytest
import torch

from dlm.config import FORMAT_VERSION, RunConfig, apply_overrides
from dlm.errors import DlmError
from dlm.objectives import BD3LM, MDLM, OBJECTIVES, SEDD, EsoLM, monte_carlo
from dlm.presets import preset_config
from dlm.train.checkpoint import load_config


class Tok:
    mask_id, eos_id = 18, 19


def run_config(name: str, **options) -> RunConfig:
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.schedule = name, OBJECTIVES.get(name).default_schedule
    cfg.data.seq_len, cfg.model.vocab_size = 8, 20
    cfg.model.d_model, cfg.model.n_layers, cfg.model.d_ff, cfg.model.max_seq_len = 32, 1, 64, 8
    cfg.objective.update(options)
    return cfg


def test_the_objective_section_of_the_run_config():
    cfg = apply_overrides(run_config("bd3lm"), ["objective.block_size=4", "objective.clip_beta=0.1"])
    assert cfg.objective == {"block_size": 4, "clip_beta": 0.1}
    assert cfg.objective_config() == BD3LM.Config(block_size=4, clip_beta=0.1)
    saved = cfg.to_dict()
    assert saved["format_version"] == FORMAT_VERSION == 2
    assert saved["objective"] == {"block_size": 4, "clip_beta": 0.1, "clip_omega": 0.8}  # every field
    assert RunConfig.from_dict(json.loads(json.dumps(saved))).objective_config() == cfg.objective_config()
    with pytest.raises(
        DlmError,
        match="objective.alpha0 is not an option of the bd3lm objective; its options: "
        "block_size, clip_beta, clip_omega",
    ):
        apply_overrides(cfg, ["objective.alpha0=0.5"])
    with pytest.raises(DlmError, match="bad value 'four' for objective.block_size \\(expected int\\)"):
        apply_overrides(cfg, ["objective.block_size=four"])
    with pytest.raises(DlmError, match="the clipped schedule needs 0 <= objective.clip_beta < objective.clip_omega"):
        apply_overrides(cfg, ["objective.clip_beta=0.9"]).validate()
    with pytest.raises(DlmError, match="objective.block_size must be of type int, got '4'"):
        RunConfig.from_dict({**saved, "objective": {"block_size": "4"}})
    with pytest.raises(DlmError, match="objective.graph is not an option of the bd3lm objective"):
        RunConfig.from_dict({**saved, "objective": {"graph": "absorb"}})
    with pytest.raises(DlmError, match="format_version 3"):
        RunConfig.from_dict({**saved, "format_version": 3})
    sedd = apply_overrides(run_config("sedd"), ["objective.graph=uniform"])
    assert OBJECTIVES.build(sedd, Tok()).config == SEDD.Config(graph="uniform")
    with pytest.raises(DlmError, match="unknown graph 'ring'; choose one of: absorb, uniform"):
        apply_overrides(sedd, ["objective.graph=ring"]).validate()


def test_an_objective_takes_only_its_own_config():
    with pytest.raises(DlmError, match="the mdlm objective takes a MDLM.Config, got EsoLM.Config"):
        MDLM(EsoLM.Config(), mask_id=0, eos_id=1, vocab_size=4)
    assert MDLM(mask_id=0, eos_id=1, vocab_size=4).schedule == "loglinear"  # None: the default schedule
    assert EsoLM(mask_id=0, eos_id=1, vocab_size=4).config == EsoLM.Config(alpha0=1.0, variant="B")


V1_TRAIN = {  # TrainConfig as format 1 wrote it: the objective's options among the training fields
    "objective": "mdlm",
    "schedule": "loglinear",
    "graph": "absorb",
    "max_steps": 20,
    "batch_size": 4,
    "grad_accum": 1,
    "lr": 0.001,
    "lr_schedule": "cosine",
    "warmup_steps": 5,
    "min_lr_ratio": 0.1,
    "weight_decay": 0.01,
    "beta1": 0.9,
    "beta2": 0.95,
    "grad_clip": 1.0,
    "precision": "fp32",
    "compile": False,
    "ema": 0.0,
    "seed": 0,
    "antithetic": True,
    "log_every": 5,
    "eval_every": 0,
    "eval_sequences": 64,
    "save_every": 0,
    "time_limit_minutes": 0.0,
    "block_size": 16,
    "clip_beta": 0.3,
    "clip_omega": 0.8,
    "alpha0": 1.0,
    "variant": "B",
}


def v1_config(**train) -> dict:
    return {
        "preset": "tiny",
        "data": {
            "name": "austen",
            "text_column": "text",
            "val_fraction": 0.05,
            "seq_len": 64,
            "tokenizer": None,
            "vocab_size": 8192,
        },
        "model": {
            "vocab_size": 8192,
            "d_model": 64,
            "n_layers": 2,
            "n_heads": 4,
            "d_ff": 256,
            "max_seq_len": 64,
            "causal": False,
            "time_conditioning": False,
            "tie_embeddings": True,
            "embed_dim": 0,
            "rope_base": 10000.0,
            "dropout": 0.0,
        },
        "train": {**V1_TRAIN, **train},
    }


@pytest.mark.parametrize(
    "train, objective, config",
    [
        (
            {"objective": "esolm", "schedule": "linear", "alpha0": 0.5},
            {"alpha0": 0.5, "variant": "B"},
            EsoLM.Config(alpha0=0.5, variant="B"),
        ),
        ({}, {}, MDLM.Config()),  # mdlm carried the default graph, block_size, ...: dropped
        ({"objective": "sedd", "graph": "uniform"}, {"graph": "uniform"}, SEDD.Config(graph="uniform")),
        (
            {"objective": "bd3lm", "block_size": 8, "clip_beta": 0.2},
            {"block_size": 8, "clip_beta": 0.2, "clip_omega": 0.8},
            BD3LM.Config(block_size=8, clip_beta=0.2),
        ),
    ],
)
def test_a_format_1_config_json_still_loads(tmp_path, train, objective, config):
    (tmp_path / "config.json").write_text(json.dumps(v1_config(**train), indent=2))
    cfg = load_config(tmp_path).validate()
    assert cfg.objective == objective and cfg.objective_config() == config
    assert cfg.train.max_steps == 20 and not any(hasattr(cfg.train, k) for k in ("graph", "alpha0", "block_size"))
    resaved = cfg.to_dict()
    assert resaved["format_version"] == 2 and resaved["objective"] == dataclasses.asdict(config)
    assert RunConfig.from_dict(resaved) == cfg


def test_monte_carlo_checks_num_samples_and_keeps_the_order_of_the_draws():
    g = torch.Generator().manual_seed(0)
    seen = []

    def draw(t):
        seen.append(t.clone())
        return t.sum(-1) if t.dim() > 1 else t

    mean = monte_carlo(
        draw, lambda n: torch.rand(n, 2, generator=g), num_samples=3, batch_size=4, device=torch.device("cpu")
    )
    times = torch.rand(12, 2, generator=torch.Generator().manual_seed(0)).view(3, 4, 2)
    assert all(torch.equal(seen[s], times[s]) for s in range(3))
    torch.testing.assert_close(mean, times.sum(-1).mean(0))
    with pytest.raises(DlmError, match="num_samples must be at least 1, got 0"):
        monte_carlo(draw, lambda n: torch.rand(n), num_samples=0, batch_size=4, device=torch.device("cpu"))
