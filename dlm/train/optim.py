"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from dlm.config import TrainConfig
from dlm.errors import DlmError


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One update for all parameters instead of a Python loop over them: the fused kernel on CUDA (a single launch
    # per step), the foreach (multi-tensor) implementation elsewhere. Each is deterministic on a given machine, so
    # a resumed run still repeats the uninterrupted one bit for bit (checkpoint.load_optimizer keeps this choice).
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **({"fused": True} if fused else {"foreach": True})
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps``, then ``cosine`` decay to ``min_lr_ratio * lr`` at ``max_steps``
    (or ``constant``)."""
    if cfg.lr_schedule not in ("cosine", "constant"):
        raise DlmError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose one of: cosine, constant")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))
