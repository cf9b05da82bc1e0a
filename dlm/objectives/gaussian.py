"""Gaussian diffusion: one regression loss, five targets, and the conversions between them.

Every target is a linear combination y = A_t x0 + B_t eps of the clean data and the noise in x_t = alpha x0 + sigma eps:

    eps: (0, 1)    x0: (1, 0)    v: (-sigma, alpha)    score: (0, -1/sigma)    flow: (alpha', sigma')

(flow is the velocity dx_t/dt, (-1, 1) for rectified flow; v is Salimans & Ho's, meant for VP schedules.)
The loss is E_{t, x0, eps} w(t) || NN(x_t, t) - (A_t x0 + B_t eps) ||^2. A prediction y_hat of any target gives
the others through (x0_hat, eps_hat), with D = alpha B - sigma A (never 0 for 0 < t < 1):

    x0_hat = (B x_t - sigma y_hat) / D,      eps_hat = (alpha y_hat - A x_t) / D.

Since eps_hat - eps = -(alpha / sigma)(x0_hat - x0) at a fixed x_t, y_hat - y = -(D / sigma)(x0_hat - x0): every
target's squared error is the x0 error times (D / sigma)^2 (``x0_loss_factor``): SNR for eps, 1 + SNR for v on VP,
1 / sigma^2 for rectified-flow velocity, SNR / sigma^2 for the score. A weighting is therefore named by what it
does to the x0 error, as a function of SNR (``WEIGHTINGS``), and means the same for every target.
"""

from __future__ import annotations

from typing import Callable

import torch

from dlm.noise.gaussian import (
    GaussianSchedule,
    add_noise,
    expand_to,
    get_gaussian_schedule,
    target_coefficients,
)
from dlm.noise.schedules import sample_times
from dlm.objectives.base import LossOutput
from dlm.registry import Registry

# x0-loss weights as functions of SNR; the loss weight for a target is this divided by its x0_loss_factor.
WEIGHTINGS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("weighting")
WEIGHTINGS.register("x0", torch.ones_like)  # plain x0-prediction MSE
WEIGHTINGS.register("snr", lambda snr: snr)  # = eps-prediction MSE (DDPM's "simple" loss)
WEIGHTINGS.register("snr+1", lambda snr: snr + 1.0)  # = v-prediction MSE on VP schedules
WEIGHTINGS.register("min-snr-5", lambda snr: snr.clamp(max=5.0))  # Min-SNR-gamma (Hang et al. 2023), gamma = 5


def x0_loss_factor(target: str, t: torch.Tensor, schedule: GaussianSchedule) -> torch.Tensor:
    """(D / sigma)^2: ||y_hat - y||^2 of ``target`` equals this times ||x0_hat - x0||^2."""
    A, B = target_coefficients(target, t, schedule)
    D = schedule.alpha(t) * B - schedule.sigma(t) * A
    return (D / schedule.sigma(t)) ** 2


def gaussian_loss(
    model,
    x0: torch.Tensor,
    *,
    schedule: str | GaussianSchedule = "vp-cosine",
    target: str = "eps",
    weighting: str | None = None,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    t_min: float = 1e-3,
) -> LossOutput:
    """E_t w(t) mean_dims (model(x_t, t) - (A_t x0 + B_t eps))^2, a scalar in float32.

    ``model(x_t [B, ...], t [B]) -> [B, ...]``. t ~ U[t_min, 1] antithetically unless given ([B]).
    ``weighting=None``: plain MSE of the target (w = 1); a name from ``WEIGHTINGS``: w = weighting(SNR) /
    x0_loss_factor, i.e. the x0 error weighted by weighting(SNR), whatever the target.
    Metrics: ``mse`` (unweighted, in the target's units) and ``x0_mse`` (the same error as an x0 error).
    """
    schedule = get_gaussian_schedule(schedule)
    # 1. sample t and noise x0
    if t is None:
        t = sample_times(x0.shape[0], generator=generator, t_min=t_min, device=x0.device).to(x0.dtype)  # (B,)
    x_t, eps = add_noise(x0, t, schedule, generator)  # (B, ...), (B, ...)
    # 2. regress the target
    A, B = target_coefficients(target, t, schedule)  # (B,), (B,)
    y = expand_to(A, x0) * x0 + expand_to(B, x0) * eps  # (B, ...)
    se = (model(x_t, t).float() - y.float()).pow(2).flatten(1).mean(1)  # (B,)
    # 3. weight per sample
    factor = x0_loss_factor(target, t, schedule).float()  # (B,)
    w = torch.ones_like(se) if weighting is None else WEIGHTINGS.get(weighting)(schedule.snr(t).float()) / factor
    return LossOutput(
        loss=(w * se).mean(), metrics={"mse": se.mean().detach(), "x0_mse": (se / factor).mean().detach()}
    )
