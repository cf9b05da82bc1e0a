"""Autoregressive sampling with a KV cache (or without, for checking and for models that have none)."""

from __future__ import annotations

import torch

from dlm.models.transformer import KVCache
from dlm.samplers.categorical import sample_categorical


@torch.no_grad()
def ar_generate(
    model,
    prompt: torch.Tensor,
    *,
    eos_id: int,
    gen_length: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """prompt [B, Lp] -> [B, Lp + gen_length]. The model sees ``<|endoftext|>`` + prompt, as in training.

    ``use_cache=True`` needs a ``dlm`` Transformer (prefill once, then one token per call); ``use_cache=False``
    re-runs the whole prefix every step and works with any causal ``model(x) -> logits``.
    """
    B = prompt.shape[0]
    seq = torch.cat([torch.full((B, 1), eos_id, dtype=prompt.dtype, device=prompt.device), prompt], dim=1)
    cache = KVCache(len(model.blocks)) if use_cache else None
    logits = model(seq, kv_cache=cache)[:, -1] if use_cache else model(seq)[:, -1]  # (B, V)
    for i in range(gen_length):
        token = sample_categorical(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )  # (B,)
        seq = torch.cat([seq, token[:, None]], dim=1)
        if history is not None:
            history.append(seq[:, 1:].clone())
        if i + 1 < gen_length:
            logits = model(token[:, None], kv_cache=cache)[:, -1] if use_cache else model(seq)[:, -1]
    return seq[:, 1:]
