"""LLaDA's semi-autoregressive confidence sampler, with Fast-dLLM's caches and threshold decoding.

1. x = prompt + gen_length masks, cut into blocks of ``block_length``; each block gets steps / num_blocks steps.
2. A block with n masks at its start commits floor(n / S) tokens per step, plus one in the first (n mod S) steps
   (LLaDA); or, with ``threshold``, every masked position whose confidence is >= tau, at least one (Fast-dLLM).
3. Each step: logits of the block (with CFG: logits_u + (cfg_scale + 1) (logits_c - logits_u), logits_u from x with
   the prompt masked); candidates x0_hat = argmax(logits + temperature * Gumbel) in float64; confidence from the
   remasking policy; commit the most confident masked positions of the block.
4. Committed tokens never change; blocks run left to right.

Caches (Fast-dLLM): at the first step of each block the whole canvas runs and its keys and values are stored;
the block's other steps re-run only the block and everything after it (``prefix``) or only the block (``dual``),
reusing the stored keys and values elsewhere. ``none`` runs the whole canvas at every step.

The mask token is never a candidate (SUBS: its logit is set to -inf before the draw); a model trained with SUBS
leaves that logit untrained, and a model that never predicts the mask is unaffected. Random draws are made for the
block only (LLaDA draws them for the whole canvas and uses the block's).
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError
from dlm.models.transformer import CanvasCache
from dlm.noise.schedules import Schedule, get_schedule
from dlm.registry import Registry
from dlm.samplers.batching import end_at_eos, padding_inputs
from dlm.samplers.categorical import Generators, filter_logits, gumbel_noise, uniform

CACHES = ("none", "prefix", "dual")

# Remasking policies: (logits float64 [B, L, V], candidates [B, L], generator, rows) -> confidence [B, L] float64
REMASKING: Registry = Registry("remasking policy")


@REMASKING.register("low_confidence")
def low_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """The model's probability of its own candidate: commit the most certain positions first."""
    return logits.softmax(-1).gather(-1, x0_hat[..., None]).squeeze(-1)


@REMASKING.register("random")
def random_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """Uniform random scores: commit positions in a random order."""
    return uniform(x0_hat.shape, generator=generator, device=x0_hat.device, rows=rows)


def num_transfer_tokens(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masks in a block -> [B, steps] commits per step: floor(n/S), plus one in the first n mod S steps."""
    base, rest = num_masked // steps, num_masked % steps  # (B,)
    return base[:, None] + (torch.arange(steps, device=num_masked.device)[None, :] < rest[:, None]).long()


@REMASKING.register("margin")
def margin_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """Top-1 minus top-2 probability (Dream): commit where the model is least torn between two tokens."""
    top2 = logits.softmax(-1).topk(2, dim=-1).values  # (B, L, 2)
    return top2[..., 0] - top2[..., 1]


@REMASKING.register("entropy")
def negative_entropy(logits: torch.Tensor, x0_hat: torch.Tensor, generator, rows=None) -> torch.Tensor:
    """Negative entropy of the position's distribution (Dream): commit the most peaked positions first."""
    log_p = logits.log_softmax(-1)
    return (log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)


def commit_top_k(confidence: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Commit the k[b] most confident positions of each row: bool [B, L]."""
    chosen = torch.zeros_like(confidence, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        chosen[j, confidence[j].topk(int(k[j])).indices] = True
    return chosen


def commit_threshold(confidence: torch.Tensor, tau: float) -> torch.Tensor:
    """Fast-dLLM: commit every eligible position with confidence >= tau, and always the most confident one."""
    eligible = confidence.isfinite()  # (B, L)
    chosen = eligible & (confidence >= tau)
    rows = eligible.any(-1)  # rows with something left to commit in the block
    chosen[rows, confidence[rows].argmax(-1)] = True
    return chosen


def check_blocks(gen_length: int, steps: int | None, block_length: int) -> int | None:
    """Validate the block layout; return the number of steps per block (None when steps is None)."""
    if gen_length <= 0 or block_length <= 0 or (steps is not None and steps <= 0):
        raise DlmError("gen_length, steps and block_length must be positive")
    if gen_length % block_length:
        raise DlmError(f"gen_length {gen_length} must be divisible by block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps is None:
        return None
    if steps % num_blocks:
        raise DlmError(f"steps {steps} must be divisible by the number of blocks {num_blocks} (gen_length / block_length)")
    return steps // num_blocks


def _propose(logits, block, mask_id, temperature, top_k, top_p, confidence_of, generator):
    """Candidates for the block [B, K] (the current token where already clean) and their confidence [B, K] (-inf
    where nothing may be committed). Rows with no mask left in the block draw nothing."""
    masked = block == mask_id  # (B, K)
    active = masked.any(1)
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=block.device), float("-inf"))  # SUBS
    if temperature > 0.0:  # argmax(logits / T + G) = argmax(logits + T G): LLaDA's draw, within top-k / top-p
        filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
        x0_hat = (filtered + gumbel_noise(logits.shape, generator=generator, device=block.device, rows=active)).argmax(-1)
    else:
        x0_hat = logits.argmax(-1)  # (B, K)
    confidence = confidence_of(logits, x0_hat, generator, active)  # (B, K)
    confidence = torch.where(masked, confidence, torch.full_like(confidence, float("-inf")))
    return torch.where(masked, x0_hat, block), confidence  # committed tokens never change


@torch.no_grad()
def confidence_generate(
    model,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    gen_length: int,
    steps: int | None = None,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    threshold: float | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    cache: str = "none",
    refresh_every: int | None = None,
    prompt_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    schedule: str | Schedule | None = None,
    generator: Generators = None,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """prompt [B, Lp] -> [B, Lp + gen_length], calling ``model(x) -> logits [B, L, V]`` ``steps`` times
    (twice the rows with CFG). ``steps=None`` means one per token; ``block_length=None`` one block (pure diffusion).

    ``threshold=tau`` switches to Fast-dLLM's parallel decoding: each step commits every masked position of the
    block whose confidence (the remasking policy's score) is >= tau, at least one, until the block is full; the
    number of model calls then adapts to the text and ``steps`` is not used. ``len(history)`` counts the steps.
    ``top_k`` / ``top_p`` restrict the candidate draw when ``temperature > 0`` (the confidence is unchanged).

    ``cache`` = ``prefix`` or ``dual`` needs a ``dlm`` Transformer (it takes a ``CanvasCache``); the cache is
    refreshed at every block start and, with ``refresh_every=n``, every n steps inside a block.
    ``prompt_mask`` [B, Lp] marks real prompt tokens of left-padded prompts (see ``batching.left_pad``).
    ``eos_id``: a row ends with the block that holds its first ``<|endoftext|>`` after the prompt; everything after
    that token is returned as ``<|endoftext|>``, and generation stops when every row has ended.
    ``schedule``: for time-conditioned models, ``model(x, t)`` with t = schedule.time_of(1 - fraction of the
    generated region still masked) (LLaDA's models take no t).
    ``generator``: one for the batch, or one per row (then each row's sample is the same in any batch).
    """
    block_length = gen_length if block_length is None else block_length
    steps = gen_length if steps is None else steps
    steps_per_block = check_blocks(gen_length, None if threshold is not None else steps, block_length)
    if cache not in CACHES:
        raise DlmError(f"unknown cache {cache!r}; choose one of: {', '.join(CACHES)}")
    confidence_of = REMASKING.get(remasking)
    B, prompt_len = prompt.shape
    total = prompt_len + gen_length
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
    keys, positions = padding_inputs(prompt_mask, total)
    prompt_cols = torch.arange(total, device=x.device)[None, :] < prompt_len
    if keys is not None:
        prompt_cols = prompt_cols & keys  # only real prompt tokens are hidden for CFG's unconditional rows
    if cfg_scale > 0.0 and keys is not None:
        keys, positions = keys.repeat(2, 1), positions.repeat(2, 1)
    canvas = CanvasCache() if cache != "none" else None
    schedule = None if schedule is None else get_schedule(schedule)
    ended = torch.zeros(B, dtype=torch.bool, device=x.device)

    def block_logits(start: int, end: int, refresh: bool) -> torch.Tensor:
        """float64 logits [B, K, V] of the block from one model call."""
        rows = torch.cat([x, torch.where(prompt_cols, mask_id, x)]) if cfg_scale > 0.0 else x
        lo, hi = (0, total) if refresh else (start, total if cache == "prefix" else end)
        kw = {}
        if canvas is not None:
            canvas.window = None if refresh else (lo, hi)
            kw["kv_cache"] = canvas
        if keys is not None:
            kw["attn_mask"], kw["positions"] = keys[:, None, :], positions[:, lo:hi]
        if schedule is None:
            args = (rows[:, lo:hi],)
        else:
            still_masked = (rows[:, prompt_len:] == mask_id).double().mean(1)  # 1 - alpha(t)
            args = (rows[:, lo:hi], schedule.time_of(1.0 - still_masked).float())
        logits = model(*args, **kw)[:, start - lo : end - lo].double()
        if cfg_scale > 0.0:
            conditional, unconditional = logits.chunk(2, dim=0)
            logits = unconditional + (cfg_scale + 1.0) * (conditional - unconditional)
        return logits

    for b in range(gen_length // block_length):
        start, end = prompt_len + b * block_length, prompt_len + (b + 1) * block_length
        if threshold is None:
            commits = num_transfer_tokens((x[:, start:end] == mask_id).sum(1), steps_per_block)  # (B, S)
        i = 0
        while i < steps_per_block if threshold is None else (x[:, start:end] == mask_id).any():
            refresh = canvas is None or i == 0 or bool(refresh_every and i % refresh_every == 0)
            logits = block_logits(start, end, refresh)
            x0_hat, confidence = _propose(logits, x[:, start:end], mask_id, temperature, top_k, top_p,
                                          confidence_of, generator)
            chosen = commit_threshold(confidence, threshold) if threshold is not None else commit_top_k(
                confidence, commits[:, i])
            x[:, start:end] = torch.where(chosen, x0_hat, x[:, start:end])
            i += 1
            if history is not None:
                history.append(x.clone())
        if eos_id is not None:
            ended |= end_at_eos(x, prompt_len, eos_id)
            if ended.all():
                break
    return x
