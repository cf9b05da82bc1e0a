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
from dlm.samplers.categorical import gumbel_noise

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


def check_blocks(gen_length: int, steps: int, block_length: int) -> int:
    """Validate the block layout; return the number of steps per block."""
    if gen_length <= 0 or steps <= 0 or block_length <= 0:
        raise DlmError("gen_length, steps and block_length must be positive")
    if gen_length % block_length:
        raise DlmError(f"gen_length {gen_length} must be divisible by block_length {block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise DlmError(f"steps {steps} must be divisible by the number of blocks {num_blocks} (gen_length / block_length)")
    return steps // num_blocks


@torch.no_grad()
def confidence_generate(
    model,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    gen_length: int,
    steps: int,
    block_length: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
    history: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """prompt [B, Lp] -> [B, Lp + gen_length], calling ``model(x) -> logits [B, L, V]`` ``steps`` times
    (twice per step with CFG). ``block_length=None`` means one block (pure diffusion)."""
    block_length = gen_length if block_length is None else block_length
    steps_per_block = check_blocks(gen_length, steps, block_length)
    confidence_of = REMASKING.get(remasking)
    B, prompt_len = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
    for block in range(gen_length // block_length):
        end = prompt_len + (block + 1) * block_length
        commits = num_transfer_tokens((x[:, end - block_length : end] == mask_id).sum(1), steps_per_block)  # (B, S)
        for i in range(steps_per_block):
            masked = x == mask_id  # (B, L)
            logits = _guided_logits(model, x, prompt_len, mask_id, cfg_scale).double()  # (B, L, V)
            logits = logits.index_fill(-1, torch.tensor([mask_id], device=x.device), float("-inf"))  # SUBS
            if temperature > 0.0:
                x0_hat = (logits + temperature * gumbel_noise(logits.shape, generator=generator, device=x.device)).argmax(-1)
            else:
                x0_hat = logits.argmax(-1)  # (B, L)
            confidence = confidence_of(logits, x0_hat, generator)  # (B, L)
            confidence[:, end:] = float("-inf")
            confidence = torch.where(masked, confidence, torch.full_like(confidence, float("-inf")))
            x0_hat = torch.where(masked, x0_hat, x)  # committed tokens never change
            for j in range(B):
                chosen = confidence[j].topk(int(commits[j, i])).indices
                x[j, chosen] = x0_hat[j, chosen]
            if history is not None:
                history.append(x.clone())
    return x
