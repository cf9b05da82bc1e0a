"""Samplers for Gaussian diffusion: DDPM, DDIM, DPM-Solver++(2M), Euler / Heun on the PF-ODE, flow-matching Euler.

Every sampler is ``sample(denoiser, x, times, *, schedule, target, generator) -> (x at times[-1], nfe)``:
``denoiser(x_t [B, ...], t [B])`` predicts ``target`` (eps, x0, v, score or flow; converted internally to
x0_hat / eps_hat with ``dlm.noise.gaussian``), ``x`` is the starting noise at times[0], and ``times`` is a
decreasing grid t_max = times[0] > ... > times[-1] = t_min (``time_grid``); steps = len(times) - 1. Step t -> s:

- DDIM (Song et al. 2021):  x_s = alpha_s x0_hat + sqrt(sigma_s^2 - eta_s^2) eps_hat + eta_s z, with eta_s = eta
  times the std of q(x_s | x_t, x0): (sigma_s / sigma_t) sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2).
  eta = 0 is deterministic (first order in lambda); eta = 1 is DDPM's ancestral sampler.
- DPM-Solver++(2M) (Lu et al. 2022), in lambda = log(alpha / sigma), h = lambda_s - lambda_t, r = h_prev / h:
  x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,  D = x0_hat + (x0_hat - x0_hat_prev) / (2 r);
  D = x0_hat (first order) at the first and the last step.
- Euler / Heun on the probability-flow ODE dx/dt = f(t) x - (1/2) g^2(t) score (f, g^2 from the schedule;
  needs 0 < t_min and alpha > 0 on the grid, where f and the score are finite).
- Flow Euler: x_s = x_t + (s - t) v_hat with the velocity v_hat = alpha' x0_hat + sigma' eps_hat (the "flow"
  target; eps_hat - x0_hat for rectified flow), finite on all of [0, 1].
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError
from dlm.noise.gaussian import GaussianSchedule, convert, get_gaussian_schedule, predict_x0_eps
from dlm.registry import Registry


def time_grid(
    steps: int,
    *,
    schedule: str | GaussianSchedule | None = None,
    t_max: float = 1.0,
    t_min: float = 1e-3,
    spacing: str = "time",
) -> torch.Tensor:
    """steps + 1 decreasing times in float64 from t_max to t_min, uniform in t (``time``) or in lambda (``lambda``,
    DPM-Solver's choice; needs the schedule and finite lambda at both ends)."""
    if steps < 1:
        raise DlmError(f"steps must be at least 1, got {steps}")
    if spacing == "time":
        return torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64)
    if spacing == "lambda":
        schedule = get_gaussian_schedule(schedule)
        lam = schedule.lam(torch.tensor([t_max, t_min], dtype=torch.float64))
        times = schedule.time_of_lambda(torch.linspace(lam[0].item(), lam[1].item(), steps + 1, dtype=torch.float64))
        times[0], times[-1] = t_max, t_min  # exact ends, not bisection's
        return times
    raise DlmError(f"unknown time spacing {spacing!r}; choose one of: time, lambda")


def guided(model_cond, model_uncond, scale: float):
    """Classifier-free guidance, the project's one convention (LLaDA's, also the confidence sampler's):
    pred = cond + s (cond - uncond) with s = ``scale`` >= 0, computed as (1 + s) c - s u so that s = 0 returns the
    conditional prediction exactly. Linear, so it applies to any target. For one model taking a condition, pass
    ``lambda x, t: model(x, t, cond)`` and its null-cond twin. Each call runs both models: the real model calls
    are twice the sampler's nfe. (s here is w - 1 of the w-parameterisation u + w (c - u).)"""
    if not scale >= 0:
        raise DlmError(f"the guidance scale must be >= 0 (0: the conditional model), got {scale}")

    def denoiser(x, t):
        return (1.0 + scale) * model_cond(x, t) - scale * model_uncond(x, t)

    return denoiser


def _call(denoiser, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One model call at the scalar time t: (prediction [B, ...], t as [B] in x's dtype)."""
    t = t.to(dtype=x.dtype, device=x.device).expand(x.shape[0])  # (B,)
    return denoiser(x, t), t


@torch.no_grad()
def ddim_sample(denoiser, x, times, *, schedule, target="eps", eta: float = 0.0, generator=None):
    """DDIM with stochasticity eta in [0, 1] (0: deterministic, 1: DDPM ancestral). Returns (x, nfe)."""
    if not 0.0 <= eta <= 1.0:
        raise DlmError(f"DDIM eta must be in [0, 1], got {eta}")
    schedule = get_gaussian_schedule(schedule)
    alpha, sigma = schedule.alpha(times), schedule.sigma(times)  # (T + 1,)
    for i in range(len(times) - 1):
        y, t = _call(denoiser, x, times[i])
        x0_hat, eps_hat = predict_x0_eps(y, target, x, t, schedule)  # (B, ...), (B, ...)
        a_t, s_t, a_s, s_s = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        noise_std = eta * (s_s / s_t) * (s_t**2 - (a_t / a_s) ** 2 * s_s**2).clamp(min=0.0).sqrt()
        x = a_s * x0_hat + (s_s**2 - noise_std**2).sqrt() * eps_hat
        if eta > 0.0:
            x = x + noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x, len(times) - 1


def ddpm_sample(denoiser, x, times, *, schedule, target="eps", generator=None):
    """DDPM's ancestral sampler: x_s ~ q(x_s | x_t, x0 = x0_hat), which is DDIM with eta = 1."""
    return ddim_sample(denoiser, x, times, schedule=schedule, target=target, eta=1.0, generator=generator)


@torch.no_grad()
def dpm_solver_2m_sample(denoiser, x, times, *, schedule, target="eps", generator=None):
    """DPM-Solver++(2M): second-order multistep in lambda, data-prediction form, first-order last step."""
    schedule = get_gaussian_schedule(schedule)
    alpha, sigma, lam = schedule.alpha(times), schedule.sigma(times), schedule.lam(times)  # (T + 1,)
    steps, x0_prev = len(times) - 1, None
    for i in range(steps):
        y, t = _call(denoiser, x, times[i])
        x0_hat, _ = predict_x0_eps(y, target, x, t, schedule)  # (B, ...)
        h = lam[i + 1] - lam[i]
        if x0_prev is None or i == steps - 1:
            D = x0_hat  # first order: the DDIM step
        else:
            r = (lam[i] - lam[i - 1]) / h
            D = x0_hat + (x0_hat - x0_prev) / (2.0 * r)
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * torch.expm1(-h) * D
        x0_prev = x0_hat
    return x, steps


def pf_ode_drift(denoiser, x, t, target: str, schedule: GaussianSchedule) -> torch.Tensor:
    """dx/dt = f(t) x - (1/2) g^2(t) score_hat(x, t), one model call."""
    y, t_b = _call(denoiser, x, t)
    score = convert(y, target, "score", x, t_b, schedule)  # (B, ...)
    return schedule.f(t) * x - 0.5 * schedule.g2(t) * score


@torch.no_grad()
def euler_sample(denoiser, x, times, *, schedule, target="eps", generator=None):
    """Euler on the PF-ODE: x_s = x_t + (s - t) drift(x_t, t)."""
    schedule = get_gaussian_schedule(schedule)
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        x = x + (s - t) * pf_ode_drift(denoiser, x, t, target, schedule)
    return x, len(times) - 1


@torch.no_grad()
def heun_sample(denoiser, x, times, *, schedule, target="eps", generator=None):
    """Heun (explicit trapezoid) on the PF-ODE: an Euler predictor, then the mean of both drifts. 2 calls a step."""
    schedule = get_gaussian_schedule(schedule)
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        d_t = pf_ode_drift(denoiser, x, t, target, schedule)
        d_s = pf_ode_drift(denoiser, x + (s - t) * d_t, s, target, schedule)
        x = x + (s - t) * 0.5 * (d_t + d_s)
    return x, 2 * (len(times) - 1)


@torch.no_grad()
def flow_euler_sample(denoiser, x, times, *, schedule="rectified-flow", target="flow", generator=None):
    """Euler on the flow-matching ODE dx/dt = v_hat (the model's output when it predicts ``flow``)."""
    schedule = get_gaussian_schedule(schedule)
    for i in range(len(times) - 1):
        t, s = times[i], times[i + 1]
        y, t_b = _call(denoiser, x, t)
        x = x + (s - t) * convert(y, target, "flow", x, t_b, schedule)
    return x, len(times) - 1


ODE_SAMPLERS: Registry = Registry("ode sampler")
ODE_SAMPLERS.register("ddpm", ddpm_sample)
ODE_SAMPLERS.register("ddim", ddim_sample)
ODE_SAMPLERS.register("dpmpp-2m", dpm_solver_2m_sample)
ODE_SAMPLERS.register("euler", euler_sample)
ODE_SAMPLERS.register("heun", heun_sample)
ODE_SAMPLERS.register("flow-euler", flow_euler_sample)
