"""Shared by the order-of-generation studies (bench/reversal.py, bench/sudoku.py): an AR and an MDLM model of the
same backbone, trained from the same random weights on the same prompt -> response records, with the project's
SFT loop (``dlm.train.sft.sft``: the loss on the response only, the prompt never masked), then loaded as Engines.

The starting point is a freshly initialised checkpoint (seeded) holding a byte-level BPE trained on the study's
text, so both models share tokenizer, shape, parameters, initial weights, batches, steps and learning rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlm.config import RunConfig
from dlm.data.tokenizer import train_tokenizer
from dlm.engine import Engine
from dlm.models.transformer import Transformer
from dlm.train import checkpoint as ckpt
from dlm.train.sft import sft, sft_config

OBJECTIVES = ("ar", "mdlm")


def shape_config(objective: str, vocab_size: int, max_seq_len: int, d_model: int, n_layers: int) -> RunConfig:
    cfg = RunConfig(preset="order-study")
    cfg.train.objective = objective
    cfg.model.vocab_size, cfg.model.max_seq_len = vocab_size, max_seq_len
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.d_ff = d_model, n_layers, 4, 4 * d_model
    cfg.model.causal = objective == "ar"
    return cfg


def init_checkpoints(out: Path, texts: list[str], *, vocab_size: int, max_seq_len: int, d_model: int,
                     n_layers: int, seed: int) -> dict[str, Path]:  # fmt: skip
    """One starting checkpoint per objective under ``out``, the same weights (seeded) and tokenizer."""
    tokenizer = train_tokenizer(texts, vocab_size)
    paths = {}
    for objective in OBJECTIVES:
        cfg = shape_config(objective, tokenizer.vocab_size, max_seq_len, d_model, n_layers)
        torch.manual_seed(seed)
        model = Transformer(cfg.model)
        paths[objective] = out / f"init-{objective}"
        ckpt.save_checkpoint(paths[objective], model=model, tokenizer=tokenizer, config=cfg)
        paths[objective] = paths[objective] / ckpt.CHECKPOINT
    return paths


def train_pair(out: Path, init: dict[str, Path], records: list[dict], *, steps: int, batch_size: int, lr: float,
               seed: int, pad_to: int, reuse: bool = False) -> dict[str, tuple[Engine, dict]]:  # fmt: skip
    """Train the AR and the MDLM model on ``records`` ({"prompt", "response"}, raw template); return per
    objective (Engine, trainer state). ``reuse``: keep a run of ``out`` that has finished ``steps`` steps on the
    same records."""
    data = out / "records.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in records)
    same_data = data.exists() and data.read_text() == text
    data.write_text(text)
    trained = {}
    for objective in OBJECTIVES:
        cfg = sft_config(str(init[objective]), str(data))
        cfg.sft.template, cfg.sft.pad_to = "raw", pad_to
        cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed = steps, batch_size, lr, seed
        cfg.train.warmup_steps, cfg.train.log_every, cfg.train.precision = min(50, steps // 10), 50, "fp32"
        run = out / objective
        state_file = run / ckpt.CHECKPOINT / "trainer_state.json"
        done = reuse and same_data and state_file.exists() and json.loads(state_file.read_text())["step"] == steps
        if not done:
            sft(cfg, run, overwrite=True, progress=False, device="cpu")
        state = json.loads(state_file.read_text())
        engine = Engine.load(run / ckpt.CHECKPOINT)
        engine.model.eval()
        trained[objective] = (engine, state)
    return trained


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0
