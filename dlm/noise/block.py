"""The block-wise masked forward process of block diffusion (BD3-LM): one time per block.

The sequence of length L is cut into L / k blocks of k tokens. Block b gets its own time t_b; each of its tokens
independently becomes ``<|mask|>`` with probability 1 - alpha(t_b). Training draws t_b from the clipped range
U[beta, omega] (BD3-LM's low-variance schedule); evaluation from U[t_min, 1] as masked diffusion does.

The attention masks of the model's two views (True = attend): ``bd3_attention_mask`` for training's one pass over
[xt, x0], ``block_causal_mask`` for the clean blocks the sampler's KV cache holds.
"""

from __future__ import annotations

import torch

from dlm.noise.schedules import Schedule, sample_times


def sample_block_times(
    batch: int,
    num_blocks: int,
    *,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_range: tuple[float, float] = (1e-3, 1.0),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Times [batch, num_blocks] in ``t_range`` = [lo, hi]: t = lo + (hi - lo) u, the u drawn by ``sample_times``
    over all batch * num_blocks blocks (antithetic: stratified across them). With t_range = (t_min, 1) and one
    block these are exactly the times of ``masked_nelbo`` for the same generator."""
    lo, hi = t_range
    u = sample_times(batch * num_blocks, generator=generator, antithetic=antithetic, t_min=0.0, device=device)
    return (lo + (hi - lo) * u).view(batch, num_blocks)


def mask_blocks(
    x0: torch.Tensor,
    t: torch.Tensor,
    block_size: int,
    schedule: Schedule,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0: [B, L], t: [B, L / block_size] -> (xt [B, L], masked [B, L] bool); position l is masked w.p.
    1 - alpha(t of its block). One uniform per position, drawn as ``mask_tokens`` draws them."""
    p_mask = (1.0 - schedule.alpha(t)).repeat_interleave(block_size, dim=1)  # (B, L)
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < p_mask  # (B, L)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def block_causal_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """bool [length, length]: token i sees token j iff block(j) <= block(i) (True = attend)."""
    block = torch.arange(length, device=device) // block_size
    return block[:, None] >= block[None, :]


def bd3_attention_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """bool [2L, 2L] for the input [xt, x0]: rows and columns 0..L-1 are xt, L..2L-1 are x0 (True = attend)."""
    block = torch.arange(length, device=device) // block_size
    same = block[:, None] == block[None, :]  # (L, L)
    earlier = block[:, None] > block[None, :]
    xt_rows = torch.cat([same, earlier], dim=1)  # xt of block b: xt of block b, x0 of blocks < b
    x0_rows = torch.cat([torch.zeros_like(same), same | earlier], dim=1)  # x0 of block b: x0 of blocks <= b
    return torch.cat([xt_rows, x0_rows], dim=0)
