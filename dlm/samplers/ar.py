"""Autoregressive sampling with a KV cache (or without, for checking and for models that have none)."""

from __future__ import annotations

import torch

from dlm.samplers.batching import padding_inputs
from dlm.samplers.categorical import Generators, sample_categorical


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
    generator: Generators = None,
    use_cache: bool = True,
    prompt_mask: torch.Tensor | None = None,
    stop_at_eos: bool = False,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """prompt [B, Lp] -> [B, Lp + gen_length]. The model sees ``<|endoftext|>`` + prompt, as in training.

    ``use_cache=True`` needs a model with ``new_cache`` (prefill once, then one token per call); ``use_cache=False``
    re-runs the whole prefix every step and works with any causal ``model(x) -> logits``.
    ``prompt_mask`` [B, Lp] marks the real tokens of left-padded prompts. ``stop_at_eos``: a row that draws
    ``<|endoftext|>`` draws nothing more (the rest of its row is ``<|endoftext|>``); generation stops when all have.
    ``generator``: one for the batch, or one per row (then each row's sample is the same in any batch).
    """
    B = prompt.shape[0]
    start = torch.full((B, 1), eos_id, dtype=prompt.dtype, device=prompt.device)
    seq = torch.cat([start, prompt], dim=1)
    mask = None if prompt_mask is None else torch.cat([prompt_mask.new_ones(B, 1), prompt_mask], dim=1)
    keys, positions = padding_inputs(mask, seq.shape[1] + gen_length)  # None when nothing is padded
    cache = model.new_cache(B, seq.shape[1] + gen_length) if use_cache else None

    def next_logits(new_tokens: int) -> torch.Tensor:
        """Logits after the last token, running the new tokens (cache) or the whole sequence."""
        n = seq.shape[1]
        lo = n - new_tokens if use_cache else 0
        kw = {} if keys is None else {"attn_mask": keys[:, None, :n], "positions": positions[:, lo:n]}
        if use_cache:
            kw["kv_cache"] = cache
        return model(seq[:, lo:], **kw)[:, -1]  # (B, V)

    logits = next_logits(seq.shape[1])
    ended = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    for i in range(gen_length):
        token = sample_categorical(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, rows=~ended
        )  # (B,)
        token = torch.where(ended, eos_id, token)
        seq = torch.cat([seq, token[:, None]], dim=1)
        if history is not None:
            history.append(seq[:, 1:].clone())
        if stop_at_eos:
            ended |= token == eos_id
            if ended.all():
                break
        if i + 1 < gen_length:
            logits = next_logits(1)
    out = seq[:, 1:]
    rest = prompt.shape[1] + gen_length - out.shape[1]
    return torch.cat([out, out.new_full((B, rest), eos_id)], dim=1) if rest else out
