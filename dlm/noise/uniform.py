"""The uniform forward process: each token independently becomes a uniformly random id w.p. 1 - alpha(t).

The random id is drawn from all ``vocab_size`` ids and may be the token itself, so the kernel is
p_t(y | x) = alpha(t) [y = x] + (1 - alpha(t)) / N, i.e. exp(sigma_bar Q) with Q = (1 1^T - N I) / N and
sigma_bar = -log alpha (N = ``vocab_size``): SEDD's uniform graph.

UDLM's mean parameterisation (``mean_log_ratios``) reads an x0-predicting model as the ratios of this process:
position l's noisy marginal is xbar_t = alpha(t) x_theta + (1 - alpha(t)) / N and s_y = xbar_t[y] / xbar_t[xt^l]
(see ``dlm.objectives.udlm``). The UDLM objective and the udlm sampler both use it.
"""

from __future__ import annotations

import math

import torch

from dlm.noise.masked import subs_log_probs
from dlm.noise.schedules import Schedule


def uniform_tokens(
    x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, vocab_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0: [B, L], t: [B] -> (xt [B, L], resampled [B, L] bool: the positions that drew a random id)."""
    p_resample = (1.0 - schedule.alpha(t))[:, None]  # (B, 1)
    resampled = torch.rand(x0.shape, generator=generator, device=x0.device) < p_resample  # (B, L)
    random = torch.randint(vocab_size, x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, L)
    return torch.where(resampled, random, x0), resampled


def mean_log_ratios(
    logits: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, *, schedule: Schedule, mask_id: int
) -> torch.Tensor:
    """x0-prediction logits [B, L, N] at times t [B] -> log s [B, L, N] = log xbar_t[y] - log xbar_t[xt^l]
    (float32, or float64 for float64 logits), xbar_t = alpha x_theta + (1 - alpha) / N; 0 at y = xt^l."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    N = logits.shape[-1]
    log_x0 = subs_log_probs(logits, mask_id).to(dtype)  # (B, L, N), no mass on the mask id
    alpha = schedule.alpha(t.double()).to(dtype)[:, None, None]  # (B, 1, 1)
    log_noise = (torch.log1p(-alpha) - math.log(N)).expand_as(log_x0)  # log((1 - alpha) / N)
    log_xbar = torch.logaddexp(alpha.log() + log_x0, log_noise)  # (B, L, N)
    return log_xbar - log_xbar.gather(-1, xt[..., None])
