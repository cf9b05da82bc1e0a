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


def sample(name, model, prompt, *, mask_id, gen_length, prompt_mask=None, generator=None, eos_id=None, pad_id=None,
           stop_at_eos=False, history=False, on_step=None, **config):
    """Run the registered sampler ``name`` through ``run_sampler`` on a prompt tensor [B, Lp] (``prompt_mask``: its
    real tokens, left-padded); ``config``: the sampler config's fields (options and model facts alike).
    Returns the ``SampleOutput`` (tokens, nfe, history)."""
    from dlm.samplers import SAMPLERS, SampleBatch, run_sampler

    entry = SAMPLERS.get(name)
    batch = SampleBatch.from_tensor(prompt, gen_length, mask_id=mask_id, prompt_mask=prompt_mask, eos_id=eos_id,
                                    pad_id=pad_id)
    return run_sampler(entry, model, batch, entry.config(**config), generator, on_step, stop_at_eos=stop_at_eos,
                       history=history)


def left_pad(prompts, pad_id):
    """Token lists -> (tokens [B, Lmax], real-token mask [B, Lmax]), padding on the left."""
    from dlm.samplers import SampleBatch

    batch = SampleBatch.from_prompts(prompts, 1, mask_id=pad_id, pad_id=pad_id)
    real = torch.ones_like(batch.prompt, dtype=torch.bool) if batch.real is None else batch.real[:, :-1]
    return batch.prompt, real
