"""Noise schedules alpha(t) for discrete diffusion, and time sampling.

Convention: t in [0, 1], t = 0 clean, t = 1 pure noise; alpha(t) is the probability that a token is still clean.
The NELBO weight is w(t) = -alpha'(t) / (1 - alpha(t)). The continuous-time bound does not depend on the schedule
(only its Monte Carlo variance does).

- ``linear``:    alpha = 1 - t                          w = 1 / t       (LLaDA's loss)
- ``loglinear``: alpha = 1 - (1 - eps) t, eps = 1e-3    w = 1 / t       (MDLM; total noise -log alpha is log-linear)
- ``cosine``:    alpha = cos(pi t / 2)                  w = (pi/2) sin(pi t/2) / (1 - cos(pi t/2))
"""

from __future__ import annotations

import math

import torch

from dlm.registry import Registry


class Schedule:
    """alpha(t), its derivative, and the NELBO weight w(t) = -alpha'(t) / (1 - alpha(t))."""

    name = "schedule"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return -self.dalpha(t) / (1.0 - self.alpha(t))

    def time_of(self, alpha: torch.Tensor) -> torch.Tensor:
        """The inverse of alpha(t): the time at which a fraction ``alpha`` of tokens is still clean."""
        raise NotImplementedError


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


@SCHEDULES.register("linear")
class LinearSchedule(Schedule):
    name = "linear"

    def alpha(self, t):
        return 1.0 - t

    def dalpha(self, t):
        return -torch.ones_like(t)

    def time_of(self, alpha):
        return 1.0 - alpha


@SCHEDULES.register("loglinear")
class LogLinearSchedule(Schedule):
    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t):
        return torch.full_like(t, -(1.0 - self.eps))

    def time_of(self, alpha):
        return ((1.0 - alpha) / (1.0 - self.eps)).clamp(max=1.0)


@SCHEDULES.register("cosine")
class CosineSchedule(Schedule):
    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def time_of(self, alpha):
        return torch.acos(alpha.clamp(0.0, 1.0)) * 2.0 / math.pi


class HybridSchedule(Schedule):
    """Eso-LM's alpha(t) = alpha0 (1 - t): at t = 0 a fraction alpha0 of the tokens is clean (the rest is left to
    the sequential part), w(t) = alpha0 / (1 - alpha0 (1 - t)). Not in ``SCHEDULES``: it takes alpha0.
    alpha0 = 1 is ``linear``."""

    name = "hybrid"

    def __init__(self, alpha0: float):
        self.alpha0 = alpha0

    def alpha(self, t):
        return self.alpha0 * (1.0 - t)

    def dalpha(self, t):
        return torch.full_like(t, -self.alpha0)

    def time_of(self, alpha):
        return (1.0 - alpha / self.alpha0).clamp(0.0, 1.0)


def get_schedule(schedule: str | Schedule) -> Schedule:
    """A schedule instance from a name (or pass an instance through)."""
    return schedule if isinstance(schedule, Schedule) else SCHEDULES.get(schedule)()


def sample_times(
    n: int,
    *,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """n times in [t_min, 1]. Antithetic: t_i = ((u + i) / n) mod 1 with one u ~ U(0, 1) (stratified, lower
    variance at no cost); else i.i.d. uniform. ``t_min`` keeps w(t) finite, as in MDLM."""
    if antithetic:
        u = torch.rand(1, generator=generator, device=device)
        t = (u + torch.arange(n, device=device) / n) % 1.0
    else:
        t = torch.rand(n, generator=generator, device=device)
    return t_min + (1.0 - t_min) * t
