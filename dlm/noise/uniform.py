"""The uniform forward process: each token independently becomes a uniformly random id w.p. 1 - alpha(t).

The random id is drawn from all ``vocab_size`` ids and may be the token itself, so the kernel is
p_t(y | x) = alpha(t) [y = x] + (1 - alpha(t)) / N, i.e. exp(sigma_bar Q) with Q = (1 1^T - N I) / N and
sigma_bar = -log alpha (N = ``vocab_size``): SEDD's uniform graph.
"""

from __future__ import annotations

import torch

from dlm.noise.schedules import Schedule


def uniform_tokens(
    x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, vocab_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0: [B, L], t: [B] -> (xt [B, L], resampled [B, L] bool: the positions that drew a random id)."""
    p_resample = (1.0 - schedule.alpha(t))[:, None]  # (B, 1)
    resampled = torch.rand(x0.shape, generator=generator, device=x0.device) < p_resample  # (B, L)
    random = torch.randint(vocab_size, x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, L)
    return torch.where(resampled, random, x0), resampled
