"""BD3-LM's sampler: blocks left to right, masked diffusion inside each block, an exact KV cache of finished blocks.

Layout: the prompt fills positions 0..Lp-1 and blocks of k tokens start at multiples of k from position 0, as in
training. Generation starts with the block that holds position Lp: a prompt that ends mid-block leaves the rest of
that block to generate, its prompt tokens being clean tokens of the block's xt. Whole blocks run until position
Lp + gen_length - 1 is covered; the tokens past it are dropped (so those kept are drawn from the model's marginal).

Inside a block, MDLM's reverse process on the grid 1 = t_0 > t_1 > ... > t_S = 0: step t -> s keeps a masked
position masked w.p. (1 - alpha(s)) / (1 - alpha(t)), else draws it from p_theta(x0^l | xt^b, x0^{<b}) (SUBS: never
the mask); the last step (alpha(0) = 1) draws every position still masked, where ``ancestral_generate`` takes the
argmax. If no token changed, the previous distribution is reused (bd3lm models take no time), as in MDLM.

The model sees what training showed it: the block being denoised attends to itself and to the clean blocks before
it, which attend block-causally among themselves (``block_causal_mask``).
- ``use_cache=False``: each call runs [clean blocks < b, noisy block b], (b + 1) k tokens, under that mask.
- ``use_cache=True``: a finished block runs once more as clean tokens and its keys and values are appended to a
  ``KVCache`` (a prompt's whole blocks in one call at the start); each denoising call then runs only the k tokens
  of block b, attending to the cache without adding to it. The cache is exact: the tokens are those of
  ``use_cache=False`` for the same seed (the logits agree up to float rounding); it costs one extra call per
  finished block and saves re-running the prefix at every step.
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError
from dlm.models.transformer import KVCache
from dlm.noise.schedules import Schedule, get_schedule
from dlm.objectives.block import block_causal_mask
from dlm.objectives.masked import subs_log_probs
from dlm.samplers.batching import end_at_eos
from dlm.samplers.categorical import Generators, sample_categorical, uniform


class AttendOnly:
    """A ``KVCache`` that a call attends to without storing its own keys and values (those of a noisy block): they
    go into the cache's free slots for this call only."""

    def __init__(self, cache: KVCache):
        self.cache = cache

    @property
    def offset(self) -> int:
        return self.cache.length

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(layer, k, v, keep=0)  # (B, H, T + k, Dh)


def num_blocks_to_generate(prompt_len: int, gen_length: int, block_size: int) -> int:
    """Blocks from the one holding position ``prompt_len`` to the one holding ``prompt_len + gen_length - 1``."""
    return -(-(prompt_len + gen_length) // block_size) - prompt_len // block_size


@torch.no_grad()
def block_generate(
    model,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    block_size: int,
    gen_length: int,
    steps_per_block: int,
    schedule: str | Schedule = "loglinear",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    use_cache: bool = True,
    eos_id: int | None = None,
    generator: Generators = None,
    history: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """prompt [B, Lp] (no padding) -> (tokens [B, Lp + gen_length], number of model calls).

    ``model(x, None, attn_mask=..., kv_cache=...) -> logits`` is a bidirectional ``dlm`` Transformer (the cache
    needs ``model.new_cache``; ``use_cache=False`` takes any callable of that signature). ``generator``: one for the
    batch or one per row (a row draws only while its block has masks, so its sample does not depend on the batch).
    With ``eos_id``, a row ends with the block that holds its first ``<|endoftext|>`` after the prompt; everything
    after it is returned as ``<|endoftext|>``, and generation stops when every row has ended.
    """
    if block_size <= 0 or gen_length <= 0 or steps_per_block <= 0:
        raise DlmError("block_size, gen_length and steps_per_block must be positive")
    schedule = get_schedule(schedule)
    k = block_size
    B, prompt_len = prompt.shape
    total = prompt_len + gen_length
    first = prompt_len // k  # the first block to generate
    last = first + num_blocks_to_generate(prompt_len, gen_length, k)  # one past the last
    x = torch.cat([prompt, torch.full((B, last * k - prompt_len), mask_id, dtype=prompt.dtype, device=prompt.device)],
                  1)  # (B, last * k)
    times = torch.linspace(1.0, 0.0, steps_per_block + 1, dtype=torch.float64, device=x.device)
    cache = model.new_cache(B, last * k) if use_cache else None  # the finished blocks and the one being denoised
    ended = torch.zeros(B, dtype=torch.bool, device=x.device)
    nfe = 0
    if use_cache and first > 0:  # the prompt's whole blocks, clean, into the cache in one call
        model(x[:, : first * k], None, attn_mask=block_causal_mask(first * k, k, x.device), kv_cache=cache)
        nfe += 1

    def block_log_probs(start: int, end: int) -> torch.Tensor:
        """log p_theta(x0 | noisy block, clean blocks before it) [B, k, V] (SUBS), one model call."""
        if use_cache:
            logits = model(x[:, start:end], None, kv_cache=AttendOnly(cache))  # (B, k, V), positions start..end-1
        else:
            logits = model(x[:, :end], None, attn_mask=block_causal_mask(end, k, x.device))[:, start:]
        return subs_log_probs(logits, mask_id)

    for b in range(first, last):
        start, end = b * k, (b + 1) * k
        log_p = None
        for i in range(steps_per_block):
            block = x[:, start:end]  # (B, k)
            masked = block == mask_id
            active = masked.any(1)  # rows that draw at this step
            if not active.any():
                break
            if log_p is None:
                log_p, nfe = block_log_probs(start, end), nfe + 1
            # step t -> s: reveal each mask w.p. (alpha(s) - alpha(t)) / (1 - alpha(t)); all of them at s = 0
            if i == steps_per_block - 1:
                reveal = masked
            else:
                alpha_t, alpha_s = schedule.alpha(times[i]), schedule.alpha(times[i + 1])
                u = uniform(block.shape, generator=generator, device=x.device, rows=active)  # (B, k)
                reveal = masked & (u < (alpha_s - alpha_t) / (1.0 - alpha_t))
            draw = sample_categorical(log_p, temperature=temperature, top_k=top_k, top_p=top_p,
                                      generator=generator, rows=active)  # (B, k)
            new = torch.where(reveal, draw, block)
            if not torch.equal(new, block):
                log_p = None  # the input changed: call the model again at the next step
            x[:, start:end] = new
            if history is not None:
                history.append(x[:, :total].clone())
        if eos_id is not None:
            ended |= end_at_eos(x[:, :end], prompt_len, eos_id)
            if ended.all():
                x[:, end:] = eos_id
                break
        if use_cache and b < last - 1:  # the finished block, clean, into the cache
            model(x[:, start:end], None, kv_cache=cache)
            nfe += 1
    if eos_id is not None:
        end_at_eos(x, prompt_len, eos_id)
    return x[:, :total], nfe
