"""Consistency distillation (Song et al. 2023): a one-step student from a teacher's probability-flow ODE.

The consistency function maps any point of an ODE trajectory to its end at t_min:

    f(x, t) = c_skip(t) x + c_out(t) F(x, t),
    c_skip(t) = sd^2 / ((sigma_t - sigma_min)^2 + sd^2),   c_out(t) = sd (sigma_t - sigma_min) / sqrt(sigma_t^2 + sd^2)

(the paper's App. C with its noise level read as our sigma_t, sd = the data's std), so f(x, t_min) = x exactly.
Distillation on a grid t_max = t_N > ... > t_0 = t_min: draw n, x_{t_{n+1}} = alpha x0 + sigma eps, take one teacher
ODE step to t_n (DDIM, the first-order exponential integrator: x_{t_n} = alpha_{t_n} x0_hat + sigma_{t_n} eps_hat),
and regress the student at t_{n+1} onto the EMA target network at t_n (no gradient through the target):

    L = E || f_student(x_{t_{n+1}}, t_{n+1}) - f_ema(x_{t_n}, t_n) ||^2.
"""

from __future__ import annotations

import torch

from dlm.noise.gaussian import GaussianSchedule, add_noise, expand_to, get_gaussian_schedule, predict_x0_eps
from dlm.objectives.base import LossOutput


def consistency_function(
    F, x: torch.Tensor, t: torch.Tensor, *, schedule: GaussianSchedule, t_min: float, sigma_data: float = 0.5
) -> torch.Tensor:
    """f(x, t) = c_skip(t) x + c_out(t) F(x, t) for x [B, ...], t [B]; equals x at t = t_min."""
    sigma, sigma_min = schedule.sigma(t), schedule.sigma(torch.full_like(t, t_min))  # (B,), (B,)
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / (sigma**2 + sigma_data**2).sqrt()
    return expand_to(c_skip, x) * x + expand_to(c_out, x) * F(x, t)


def consistency_distillation_loss(
    student,
    ema_student,
    teacher,
    x0: torch.Tensor,
    times: torch.Tensor,
    *,
    schedule: str | GaussianSchedule,
    teacher_target: str = "eps",
    sigma_data: float = 0.5,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Consistency-distillation loss on the decreasing grid ``times`` (t_max ... t_min, e.g. ``time_grid``).

    ``student`` and ``ema_student`` are the raw networks F(x, t); ``teacher(x, t)`` predicts ``teacher_target``.
    """
    schedule = get_gaussian_schedule(schedule)
    times = times.to(dtype=x0.dtype, device=x0.device)
    t_min = times[-1].item()
    # 1. a grid step per sample: from t_{n+1} = times[i] down to t_n = times[i + 1]
    i = torch.randint(len(times) - 1, (x0.shape[0],), generator=generator, device=x0.device)  # (B,)
    t_next, t_n = times[i], times[i + 1]  # (B,), (B,)
    x_next, _ = add_noise(x0, t_next, schedule, generator)  # (B, ...)
    # 2. one teacher ODE step (DDIM) to t_n; then the EMA target there, without gradient
    with torch.no_grad():
        x0_hat, eps_hat = predict_x0_eps(teacher(x_next, t_next), teacher_target, x_next, t_next, schedule)
        x_n = expand_to(schedule.alpha(t_n), x0) * x0_hat + expand_to(schedule.sigma(t_n), x0) * eps_hat
        target = consistency_function(ema_student, x_n, t_n, schedule=schedule, t_min=t_min, sigma_data=sigma_data)
    # 3. the student at t_{n+1} regresses onto it
    pred = consistency_function(student, x_next, t_next, schedule=schedule, t_min=t_min, sigma_data=sigma_data)
    return LossOutput(loss=(pred.float() - target.float()).pow(2).mean())
