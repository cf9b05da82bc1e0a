"""Named model + training presets: ``tiny`` (tests), ``small`` (the CPU default), ``base`` (GPU, MDLM-small shape)."""

from __future__ import annotations

from dataclasses import replace

from dlm.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dlm.registry import Registry

PRESETS: Registry[RunConfig] = Registry("preset")

PRESETS.register(
    "tiny",  # < 1M parameters with the default 8k vocabulary; trains 40 steps in seconds
    RunConfig(
        preset="tiny",
        data=DataConfig(seq_len=64),
        model=ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=64, tie_embeddings=True),
        train=TrainConfig(batch_size=8, lr=2e-3, warmup_steps=10, log_every=5, eval_sequences=16),
    ),
)
PRESETS.register(
    "small",  # about 17M parameters: 6 layers, d = 384, untied 8k embeddings
    RunConfig(
        preset="small",
        data=DataConfig(seq_len=256),
        model=ModelConfig(d_model=384, n_layers=6, n_heads=6, d_ff=1536, max_seq_len=256),
        train=TrainConfig(batch_size=16, lr=1e-3, warmup_steps=50),
    ),
)
PRESETS.register(
    "base",  # about 100M parameters: MDLM-small / GPT-2-small shape, for GPUs
    RunConfig(
        preset="base",
        data=DataConfig(seq_len=1024),
        model=ModelConfig(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_seq_len=1024),
        train=TrainConfig(batch_size=32, lr=3e-4, warmup_steps=2500, max_steps=100_000, log_every=50),
    ),
)


def preset_config(name: str) -> RunConfig:
    """A fresh copy of preset ``name`` (an unknown name lists the valid ones)."""
    base = PRESETS.get(name)
    return RunConfig(preset=base.preset, data=replace(base.data), model=replace(base.model), train=replace(base.train))
