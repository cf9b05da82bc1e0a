"""Gaussian forward process: x_t = alpha_t x0 + sigma_t eps, eps ~ N(0, I), t in [0, 1] (0 clean, 1 noise).

Every schedule gives alpha_t, sigma_t and their time derivatives; from them

    SNR(t) = alpha_t^2 / sigma_t^2,      lambda_t = log(alpha_t / sigma_t) = log(SNR) / 2  (decreasing in t),
    f(t) = d log alpha_t / dt,           g^2(t) = d sigma_t^2 / dt - 2 f(t) sigma_t^2,

the drift pieces of the probability-flow ODE dx/dt = f x - (1/2) g^2 score, and the inverse t(lambda) that
lambda-spaced time grids (DPM-Solver) need: closed form where there is one, bisection otherwise.

- ``vp-linear``:      DDPM's linear betas in continuous time, beta(t) = beta_min + t (beta_max - beta_min),
                      alpha_t = exp(-1/2 int_0^t beta) = exp(-beta_min t / 2 - (beta_max - beta_min) t^2 / 4),
                      sigma_t = sqrt(1 - alpha_t^2); g^2 = beta. alpha_1 = 6.6e-3 with (0.1, 20).
- ``vp-cosine``:      Nichol & Dhariwal: alpha = cos(phi), sigma = sin(phi), phi rising linearly in t from
                      phi_0 = (s / (1 + s)) pi / 2 (s = 0.008: sigma_0 = 0.0125, small but > 0) to
                      phi_1 = arccos(alpha_min) (alpha_1 = 1e-4 ~ 0, clipped short of pi/2 so lambda_1 is finite).
- ``rectified-flow``: alpha = 1 - t, sigma = t (flow matching's straight path).
- ``vp-sqrt``:        Diffusion-LM's (Li et al. 2022) alpha_t^2 = 1 - sqrt(u), u = u_1 t, so sigma = u^(1/4): noise
                      rises steeply from t = 0 (sigma = 0.1 already at t = 1e-4, the paper's offset s, where its
                      first latent sits), as clean word embeddings are too easy to denoise; u_1 = (1 - alpha_min^2)^2
                      puts alpha_1 = alpha_min = 1e-4.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from dlm.errors import DlmError
from dlm.registry import Registry


def expand_to(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient [B] (or a scalar) reshaped to broadcast against x [B, ...]."""
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


class GaussianSchedule:
    """alpha_t, sigma_t, their derivatives, and what follows from them (SNR, lambda, f, g^2, t(lambda))."""

    name = "gaussian"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dsigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        return (self.alpha(t) / self.sigma(t)) ** 2

    def lam(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t / sigma_t), half the log-SNR."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def f(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) = d log alpha_t / dt = alpha_t' / alpha_t."""
        return self.dalpha(t) / self.alpha(t)

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """g^2(t) = d sigma_t^2 / dt - 2 f(t) sigma_t^2."""
        sigma = self.sigma(t)
        return 2.0 * sigma * self.dsigma(t) - 2.0 * self.f(t) * sigma**2

    def time_of_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        """t(lambda), the inverse of lam(t), by bisection on [0, 1] (lambda decreases in t; clamped to the ends)."""
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(60):  # 2^-60: below float64 resolution
            mid = (lo + hi) / 2
            above = self.lam(mid) > lam  # lambda still too high: the answer is later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2


GAUSSIAN_SCHEDULES: Registry[type[GaussianSchedule]] = Registry("gaussian schedule")


@GAUSSIAN_SCHEDULES.register("vp-linear")
class VPLinearSchedule(GaussianSchedule):
    name = "vp-linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        return -0.5 * self.beta_min * t - 0.25 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))  # sqrt(1 - alpha^2), accurate near t = 0

    def dalpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def dsigma(self, t):
        return 0.5 * self.beta(t) * self.alpha(t) ** 2 / self.sigma(t)  # from sigma^2 = 1 - alpha^2

    def lam(self, t):
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    def time_of_lambda(self, lam):
        """-log alpha = c = softplus(-2 lambda) / 2 solves beta_min t / 2 + (beta_max - beta_min) t^2 / 4 = c."""
        c = 0.5 * torch.nn.functional.softplus(-2.0 * lam)
        b = 0.5 * self.beta_min
        return 2.0 * c / (b + torch.sqrt(b**2 + (self.beta_max - self.beta_min) * c))


@GAUSSIAN_SCHEDULES.register("vp-cosine")
class VPCosineSchedule(GaussianSchedule):
    name = "vp-cosine"

    def __init__(self, s: float = 0.008, alpha_min: float = 1e-4):
        self.phi_0 = s / (1.0 + s) * math.pi / 2
        self.phi_1 = math.acos(alpha_min)

    def phi(self, t):
        return self.phi_0 + t * (self.phi_1 - self.phi_0)

    def alpha(self, t):
        return torch.cos(self.phi(t))

    def sigma(self, t):
        return torch.sin(self.phi(t))

    def dalpha(self, t):
        return -torch.sin(self.phi(t)) * (self.phi_1 - self.phi_0)

    def dsigma(self, t):
        return torch.cos(self.phi(t)) * (self.phi_1 - self.phi_0)

    def lam(self, t):
        return -torch.log(torch.tan(self.phi(t)))

    def time_of_lambda(self, lam):
        """phi = arctan(exp(-lambda)), t = (phi - phi_0) / (phi_1 - phi_0)."""
        return (torch.atan(torch.exp(-lam)) - self.phi_0) / (self.phi_1 - self.phi_0)


@GAUSSIAN_SCHEDULES.register("rectified-flow")
class RectifiedFlowSchedule(GaussianSchedule):
    name = "rectified-flow"

    def alpha(self, t):
        return 1.0 - t

    def sigma(self, t):
        return t.clone()

    def dalpha(self, t):
        return -torch.ones_like(t)

    def dsigma(self, t):
        return torch.ones_like(t)

    def lam(self, t):
        return torch.log1p(-t) - torch.log(t)

    def time_of_lambda(self, lam):
        """(1 - t) / t = exp(lambda)  =>  t = sigmoid(-lambda)."""
        return torch.sigmoid(-lam)


@GAUSSIAN_SCHEDULES.register("vp-sqrt")
class VPSqrtSchedule(GaussianSchedule):
    name = "vp-sqrt"

    def __init__(self, alpha_min: float = 1e-4):
        self.c = alpha_min**2 * (2.0 - alpha_min**2)  # 1 - u_1
        self.u_1 = 1.0 - self.c

    def alpha(self, t):
        one_minus_u = 1.0 - t + t * self.c  # 1 - u without cancellation near t = 1
        return torch.sqrt(one_minus_u / (1.0 + torch.sqrt(self.u_1 * t)))  # sqrt(1 - sqrt(u))

    def sigma(self, t):
        return (self.u_1 * t) ** 0.25

    def dalpha(self, t):
        return -self.u_1 / (4.0 * self.alpha(t) * torch.sqrt(self.u_1 * t))

    def dsigma(self, t):
        return self.u_1 / (4.0 * (self.u_1 * t) ** 0.75)

    def time_of_lambda(self, lam):
        """SNR = (1 - r) / r with r = sqrt(u), so r = sigmoid(-2 lambda) and t = r^2 / u_1."""
        return torch.sigmoid(-2.0 * lam) ** 2 / self.u_1


def get_gaussian_schedule(schedule: str | GaussianSchedule) -> GaussianSchedule:
    """A schedule instance from a name (or pass an instance through)."""
    return schedule if isinstance(schedule, GaussianSchedule) else GAUSSIAN_SCHEDULES.get(schedule)()


def add_noise(
    x0: torch.Tensor,
    t: torch.Tensor,
    schedule: str | GaussianSchedule,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [B, ...], t [B] -> (x_t = alpha_t x0 + sigma_t eps, eps), both [B, ...]."""
    schedule = get_gaussian_schedule(schedule)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_t = expand_to(schedule.alpha(t), x0) * x0 + expand_to(schedule.sigma(t), x0) * eps
    return x_t, eps


# Prediction targets (the parameterisation of a Gaussian denoiser): y = A_t x0 + B_t eps. Objectives regress them,
# samplers convert a prediction of any of them into x0_hat / eps_hat.
Coefficients = Callable[[GaussianSchedule, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
TARGETS: Registry[Coefficients] = Registry("target")
TARGETS.register("eps", lambda sch, t: (torch.zeros_like(t), torch.ones_like(t)))
TARGETS.register("x0", lambda sch, t: (torch.ones_like(t), torch.zeros_like(t)))
TARGETS.register("v", lambda sch, t: (-sch.sigma(t), sch.alpha(t)))
TARGETS.register("score", lambda sch, t: (torch.zeros_like(t), -1.0 / sch.sigma(t)))
TARGETS.register("flow", lambda sch, t: (sch.dalpha(t), sch.dsigma(t)))


def target_coefficients(target: str, t: torch.Tensor, schedule: GaussianSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_t, B_t) of ``target`` = A_t x0 + B_t eps; same shape as t."""
    return TARGETS.get(target)(schedule, t)


def predict_x0_eps(
    y: torch.Tensor, target: str, x_t: torch.Tensor, t: torch.Tensor, schedule: str | GaussianSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a prediction y of ``target`` at (x_t, t); t is [B] or a scalar."""
    schedule = get_gaussian_schedule(schedule)
    A, B = target_coefficients(target, t, schedule)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    D = alpha * B - sigma * A
    if (D == 0).any():
        raise DlmError(
            f"a {target!r} prediction says nothing about x0 or eps at t = {t[D == 0][0].item():g}"
            " (alpha B - sigma A = 0, e.g. eps where alpha = 0): keep times inside (0, 1) or predict x0, v or flow"
        )
    A, B, alpha, sigma, D = (expand_to(c, x_t) for c in (A, B, alpha, sigma, D))
    return (B * x_t - sigma * y) / D, (alpha * y - A * x_t) / D


def convert(
    y: torch.Tensor,
    from_target: str,
    to_target: str,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: str | GaussianSchedule,
) -> torch.Tensor:
    """A prediction of ``from_target`` as a prediction of ``to_target``: A' x0_hat + B' eps_hat."""
    if from_target == to_target:
        TARGETS.get(to_target)  # still reject an unknown name
        return y
    schedule = get_gaussian_schedule(schedule)
    x0_hat, eps_hat = predict_x0_eps(y, from_target, x_t, t, schedule)
    A, B = target_coefficients(to_target, t, schedule)
    return expand_to(A, x_t) * x0_hat + expand_to(B, x_t) * eps_hat


ROUNDING_NOISE = 0.1  # Diffusion-LM: sigma / alpha of the first latent, the paper's x_0 = e + 0.1 eps


def first_latent_time(schedule: GaussianSchedule) -> float:
    """Diffusion-LM's t_min: the time where sigma / alpha = ``ROUNDING_NOISE`` (SNR = 100), on any schedule."""
    return schedule.time_of_lambda(torch.tensor(-math.log(ROUNDING_NOISE), dtype=torch.float64)).item()
