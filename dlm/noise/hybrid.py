"""Eso-LM's hybrid process: the schedule alpha_t = alpha0 (1 - t) (``HybridSchedule``) and the rank-based
attention masks of its two passes (True = attend; RoPE keeps the original positions). ``rank`` is a permutation
of the positions that puts every clean token before every masked one.

- Diffusion pass on zt (``esolm_diffusion_mask``). Variant B (cacheable): i attends j iff rank[j] <= rank[i].
  Variant A: clean tokens attend every clean token; a masked token attends every clean token and itself.
- Sequential pass on [z0, x] (``esolm_sequential_mask``, 2L tokens): see its docstring and ``dlm.objectives.esolm``.

The objective (``dlm.objectives.esolm``) and the sampler (``dlm.samplers.esolm``) both build their masks here, so
the cached sampler sees exactly what training showed the model.
"""

from __future__ import annotations

import torch

from dlm.noise.schedules import HybridSchedule

VARIANTS = ("A", "B")

__all__ = ["HybridSchedule", "VARIANTS", "esolm_diffusion_mask", "esolm_sequential_mask"]


def esolm_diffusion_mask(clean: torch.Tensor, rank: torch.Tensor | None, variant: str) -> torch.Tensor:
    """bool [B, L, L] of the diffusion pass on zt (True = attend). clean: bool [B, L]; rank: [B, L] (variant B
    only): B attends j iff rank[j] <= rank[i]; A attends every clean j, and a masked i also itself."""
    if variant == "B":
        return rank[:, None, :] <= rank[:, :, None]  # (B, L, L)
    eye = torch.eye(clean.shape[1], dtype=torch.bool, device=clean.device)
    return clean[:, None, :] | eye  # clean rows: the clean tokens (self included); masked rows: the clean tokens + self


def esolm_sequential_mask(clean: torch.Tensor, rank: torch.Tensor | None, variant: str) -> torch.Tensor:
    """bool [B, 2L, 2L] of the sequential pass on [z0, x] (rows and columns 0..L-1: z0, L..2L-1: x).
    clean: bool [B, L], the clean positions of z0; rank: [B, L] (variant B only)."""
    L = clean.shape[1]
    masked = ~clean
    eye = torch.eye(L, dtype=torch.bool, device=clean.device)
    before = torch.ones(L, L, dtype=torch.bool, device=clean.device).tril(-1)  # (L, L): j < i
    clean_cols = clean[:, None, :]  # (B, 1, L)
    # z0 rows: a clean token as in the diffusion pass over the clean tokens; a masked one sees the clean tokens + self
    clean_rows = clean_cols if variant == "A" else clean_cols & (rank[:, None, :] <= rank[:, :, None])
    z0_z0 = torch.where(clean[:, :, None], clean_rows, clean_cols | eye)  # (B, L, L)
    z0_x = masked[:, :, None] & masked[:, None, :] & before  # masked i: x copies of masked j < i
    # x rows: a token masked in z0 sees the clean z0 tokens and the x copies of masked j' <= j; a clean one itself
    x_z0 = masked[:, :, None] & clean_cols
    x_x = torch.where(masked[:, :, None], masked[:, None, :] & (before | eye), eye)
    return torch.cat([torch.cat([z0_z0, z0_x], 2), torch.cat([x_z0, x_x], 2)], 1)  # (B, 2L, 2L)
