"""Helpers shared by the test files: the CLI as a subprocess, and a small Transformer with context-dependent draws."""

from __future__ import annotations

import subprocess
import sys

import torch

from dlm.config import ModelConfig
from dlm.models.transformer import Transformer


def dlm(*args, check=True):
    """Run ``python -m dlm.cli ARGS``; with ``check``, a failure raises with the end of its stderr."""
    proc = subprocess.run([sys.executable, "-m", "dlm.cli", *map(str, args)], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlm {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc


def sharp_transformer(seed=0, vocab=32):
    """A random bidirectional 2-layer Transformer whose head is scaled up from the 0.02 init, so that its draws
    depend on the context (for cached == uncached sampler tests)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model
