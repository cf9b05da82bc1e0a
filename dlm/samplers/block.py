"""BD3-LM's sampler: blocks left to right, masked diffusion inside each block, an exact KV cache of finished blocks.

Layout: the prompt fills positions 0..Lp-1 and blocks of k tokens start at multiples of k from position 0, as in
training. Generation starts with the block that holds position Lp: a prompt that ends mid-block leaves the rest of
that block to generate, its prompt tokens being clean tokens of the block's xt. Whole blocks run until position
Lp + gen_length - 1 is covered; the tokens past it are dropped (so those kept are drawn from the model's marginal).
``steps`` (default: one per generated token) are shared out over those blocks as evenly as possible, the first
blocks taking the remainder, each at least one.

Infilling (``SampleBatch.from_canvases``): generation starts with the block of the first hole and ends with the
block of the last; only masks change, and blocks of fixed text alone take no steps (they go into the cache as
clean blocks). A hole sees the clean blocks before it and the fixed text of its own block on both sides, not the
blocks after it: BD3-LM's attention conditions on the right only within the current block.

Inside a block, MDLM's reverse process on the grid 1 = t_0 > t_1 > ... > t_S = 0: step t -> s keeps a masked
position masked w.p. (1 - alpha(s)) / (1 - alpha(t)), else draws it from p_theta(x0^l | xt^b, x0^{<b}) (SUBS: never
the mask); the last step (alpha(0) = 1) draws every position still masked, where ``ancestral_generate`` takes the
argmax. If no token changed, the previous distribution is reused (bd3lm models take no time), as in MDLM.

The model sees what training showed it: the block being denoised attends to itself and to the clean blocks before
it, which attend block-causally among themselves (``block_causal_mask``).
- ``cache="none"``: each call runs [clean blocks < b, noisy block b], (b + 1) k tokens, under that mask.
- ``cache="kv"`` (default): a finished block runs once more as clean tokens and its keys and values are appended to a
  ``KVCache`` (a prompt's whole blocks in one call at the start); each denoising call then runs only the k tokens
  of block b, attending to the cache without adding to it. The cache is exact: the tokens are those of
  ``cache="none"`` for the same seed (the logits agree up to float rounding); it costs one extra call per
  finished block and saves re-running the prefix at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm.errors import DlmError
from dlm.models.transformer import KVCache
from dlm.noise.block import block_causal_mask
from dlm.noise.masked import MaskedProcess
from dlm.samplers.base import MODEL, ReuseLogits, SampleBatch, SampleOutput, SamplerConfig, SampleState, report

BLOCK_CACHES = ("kv", "none")


@dataclass(frozen=True)
class BlockConfig(SamplerConfig):
    steps: int | None = None  # denoising steps of the whole generation (default: one per generated token)
    block_length: int | None = None  # the block size (default: the model's, block_size)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cache: str = "kv"  # kv: the exact KV cache of finished blocks; none: re-run them at every step
    schedule: str = field(default="loglinear", metadata=MODEL)
    block_size: int | None = field(default=None, metadata=MODEL)  # the block size the model was trained with

    def __post_init__(self):
        super().__post_init__()
        if self.cache not in BLOCK_CACHES:
            raise DlmError(
                f"unknown cache {self.cache!r} for the block sampler; choose one of: {', '.join(BLOCK_CACHES)}"
            )
        if not (self.block_length or self.block_size):
            raise DlmError("the block sampler needs a block size: pass --block-length (a bd3lm model's is the default)")


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
def block_generate(model, batch: SampleBatch, config: BlockConfig, generators=None, on_step=None) -> SampleOutput:
    """An unpadded batch -> the canvas. ``model(x, None, attn_mask=..., kv_cache=...) -> logits`` is bidirectional
    (the cache needs ``model.new_cache``; ``cache="none"`` takes any callable of that signature). A row draws only
    while its block has masks, so with one generator per row its sample does not depend on the batch."""
    k = config.block_length or config.block_size
    process = MaskedProcess(config.schedule, batch.mask_id)
    use_cache = config.cache == "kv"
    mask_id, prompt_len = batch.mask_id, batch.prompt_len
    B, total = batch.tokens.shape
    first = prompt_len // k  # the first block to generate
    last_open = total - 1 - int((~batch.fixed).any(0).flip(0).long().argmax())  # the last column that may change
    last = last_open // k + 1  # one past the last block to generate (after a prompt: the last generated token's)
    # the blocks with something to generate share the steps (infilling: a block of fixed text only gets none)
    todo = [b for b in range(first, last) if bool((~batch.fixed[:, b * k : (b + 1) * k]).any())]
    steps = config.steps or batch.open_length
    if steps < len(todo):
        raise DlmError(f"steps {steps} must be at least the number of blocks to generate ({len(todo)})")
    per_block = {b: steps // len(todo) + (i < steps % len(todo)) for i, b in enumerate(todo)}
    x = torch.cat([batch.tokens, batch.tokens.new_full((B, max(0, last * k - total)), mask_id)], 1)
    cache = model.new_cache(B, last * k) if use_cache else None  # the finished blocks and the one being denoised
    nfe, step = 0, 0
    if use_cache and first > 0:  # the prompt's whole blocks, clean, into the cache in one call
        model(x[:, : first * k], None, attn_mask=block_causal_mask(first * k, k, x.device), kv_cache=cache)
        nfe += 1

    def block_log_probs(start: int, end: int) -> torch.Tensor:
        """log p_theta(x0 | noisy block, clean blocks before it) [B, k, V] (SUBS), one model call."""
        if use_cache:
            logits = model(x[:, start:end], None, kv_cache=AttendOnly(cache))  # (B, k, V), positions start..end-1
        else:
            logits = model(x[:, :end], None, attn_mask=block_causal_mask(end, k, x.device))[:, start:]
        return process.log_probs(logits)

    for b in range(first, last):
        start, end = b * k, (b + 1) * k
        S = per_block.get(b, 0)
        times = torch.linspace(1.0, 0.0, S + 1, dtype=torch.float64, device=x.device)
        # one model call per change of the block (bd3lm models take no time): MDLM's cache, per block
        log_probs, stop = ReuseLogits(lambda block: block_log_probs(start, end)), False
        for i in range(S):
            block = x[:, start:end]  # (B, k)
            active = (block == mask_id).any(1)  # rows that draw at this step
            if not active.any():
                break
            log_p = log_probs(block)
            # step t -> s of the masked process (s = 0 at the block's last step: every mask is drawn)
            new = process.step(
                block,
                log_p,
                times[i + 1],
                times[i],
                generators,
                temperature=config.temperature,
                top_k=config.top_k,
                top_p=config.top_p,
                rows=active,
            )
            x[:, start:end] = new
            step += 1
            canvas, calls = x[:, :total], nfe + log_probs.nfe
            if not report(
                on_step, lambda: SampleState(canvas, canvas != mask_id, step, calls, masked=canvas == mask_id)
            ):
                stop = True
                break
        nfe += log_probs.nfe
        if stop:
            break
        if use_cache and b < last - 1:  # the finished block, clean, into the cache
            model(x[:, start:end], None, kv_cache=cache)
            nfe += 1
    return SampleOutput(x[:, :total], nfe)
