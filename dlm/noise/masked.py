"""The masked (absorbing) forward process: each token independently becomes ``<|mask|>`` w.p. 1 - alpha(t)."""

from __future__ import annotations

import torch

from dlm.noise.schedules import Schedule


def mask_tokens(
    x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0: [B, L], t: [B] -> (xt [B, L], masked [B, L] bool)."""
    p_mask = (1.0 - schedule.alpha(t))[:, None]  # (B, 1)
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < p_mask  # (B, L)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked
