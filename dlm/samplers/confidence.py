"""LLaDA's semi-autoregressive confidence sampler (``generate`` in the LLaDA reference code), token for token.

1. x = prompt + gen_length masks, cut into blocks of ``block_length``; each block gets steps / num_blocks steps.
2. A block with n masks at its start commits floor(n / S) tokens per step, plus one in the first (n mod S) steps.
3. Each step: logits = model(x) (with CFG: logits_u + (cfg_scale + 1) (logits_c - logits_u), logits_u from x with
   the prompt masked); candidates x0_hat = argmax(logits + temperature * Gumbel) in float64; confidence from the
   remasking policy; positions right of the block or already unmasked get -inf; commit the top-k.
4. Committed tokens never change; blocks run left to right.

The mask token is never a candidate (SUBS: its logit is set to -inf before the draw); a model trained with SUBS
leaves that logit untrained, and a model that never predicts the mask is unaffected.
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError
from dlm.registry import Registry
from dlm.samplers.categorical import filter_logits, gumbel_noise

# Remasking policies: (logits float64 [B, L, V], candidates [B, L], generator) -> confidence [B, L] float64
REMASKING: Registry = Registry("remasking policy")


@REMASKING.register("low_confidence")
def low_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator) -> torch.Tensor:
    """The model's probability of its own candidate: commit the most certain positions first."""
    return logits.softmax(-1).gather(-1, x0_hat[..., None]).squeeze(-1)


@REMASKING.register("random")
def random_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator) -> torch.Tensor:
    """Uniform random scores: commit positions in a random order."""
    return torch.rand(x0_hat.shape, dtype=torch.float64, generator=generator, device=x0_hat.device)


def num_transfer_tokens(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masks in a block -> [B, steps] commits per step: floor(n/S), plus one in the first n mod S steps."""
    base, rest = num_masked // steps, num_masked % steps  # (B,)
    return base[:, None] + (torch.arange(steps, device=num_masked.device)[None, :] < rest[:, None]).long()


def _guided_logits(model, x: torch.Tensor, prompt_len: int, mask_id: int, cfg_scale: float) -> torch.Tensor:
    if cfg_scale <= 0.0:
        return model(x)
    unconditional = x.clone()
    unconditional[:, :prompt_len] = mask_id  # the prompt hidden
    logits_c, logits_u = model(torch.cat([x, unconditional], dim=0)).chunk(2, dim=0)
    return logits_u + (cfg_scale + 1.0) * (logits_c - logits_u)


@REMASKING.register("margin")
def margin_confidence(logits: torch.Tensor, x0_hat: torch.Tensor, generator) -> torch.Tensor:
    """Top-1 minus top-2 probability (Dream): commit where the model is least torn between two tokens."""
    top2 = logits.softmax(-1).topk(2, dim=-1).values  # (B, L, 2)
    return top2[..., 0] - top2[..., 1]


@REMASKING.register("entropy")
def negative_entropy(logits: torch.Tensor, x0_hat: torch.Tensor, generator) -> torch.Tensor:
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


def _propose(model, x, prompt_len, mask_id, cfg_scale, temperature, top_k, top_p, confidence_of, end, generator):
    """One model call: candidates [B, L] (the current token where already clean) and their confidence [B, L]
    (-inf where nothing may be committed: clean positions and positions right of the block)."""
    masked = x == mask_id  # (B, L)
    logits = _guided_logits(model, x, prompt_len, mask_id, cfg_scale).double()  # (B, L, V)
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=x.device), float("-inf"))  # SUBS
    if temperature > 0.0:  # argmax(logits / T + G) = argmax(logits + T G): LLaDA's draw, within top-k / top-p
        filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
        x0_hat = (filtered + gumbel_noise(logits.shape, generator=generator, device=x.device)).argmax(-1)
    else:
        x0_hat = logits.argmax(-1)  # (B, L)
    confidence = confidence_of(logits, x0_hat, generator)  # (B, L)
    confidence[:, end:] = float("-inf")
    confidence = torch.where(masked, confidence, torch.full_like(confidence, float("-inf")))
    return torch.where(masked, x0_hat, x), confidence  # committed tokens never change


@torch.no_grad()
def confidence_generate(
    model,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    gen_length: int,
    steps: int | None,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    threshold: float | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """prompt [B, Lp] -> [B, Lp + gen_length], calling ``model(x) -> logits [B, L, V]`` ``steps`` times
    (twice per step with CFG). ``block_length=None`` means one block (pure diffusion).

    ``threshold=tau`` switches to Fast-dLLM's parallel decoding: each step commits every masked position of the
    block whose confidence (the remasking policy's score) is >= tau, at least one, until the block is full; the
    number of model calls then adapts to the text and ``steps`` is not used. ``len(history)`` counts the calls.
    ``top_k`` / ``top_p`` restrict the candidate draw when ``temperature > 0`` (the confidence is unchanged).
    """
    block_length = gen_length if block_length is None else block_length
    steps_per_block = check_blocks(gen_length, None if threshold is not None else steps, block_length)
    confidence_of = REMASKING.get(remasking)
    B, prompt_len = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
    for block in range(gen_length // block_length):
        start, end = prompt_len + block * block_length, prompt_len + (block + 1) * block_length
        if threshold is None:
            commits = num_transfer_tokens((x[:, start:end] == mask_id).sum(1), steps_per_block)  # (B, S)
        i = 0
        while i < steps_per_block if threshold is None else (x[:, start:end] == mask_id).any():
            x0_hat, confidence = _propose(model, x, prompt_len, mask_id, cfg_scale, temperature, top_k, top_p,
                                          confidence_of, end, generator)
            chosen = commit_threshold(confidence, threshold) if threshold is not None else commit_top_k(
                confidence, commits[:, i])
            x = torch.where(chosen, x0_hat, x)
            i += 1
            if history is not None:
                history.append(x.clone())
    return x
