"""SEDD's graphs as processes: the total noise, the output scaling that reads logits as ratios, and the reverse
step's probabilities. The forward draws are ``mask_tokens`` (absorb) and ``uniform_tokens`` (uniform); the score
entropy that trains the ratios is in ``dlm.objectives.score_entropy``, the sampler loop in
``dlm.samplers.score_entropy``.

Total noise sigma_bar(t) = -log alpha(t) (SEDD's log-linear noise is our ``loglinear`` schedule). Output scaling
(``log_ratios``): absorb, log s = logits - log(e^sigma_bar - 1) - log(V - 1); uniform, log s = logits; in both
log s = 0 at y = xt^l.

Reverse step t -> s, delta = sigma_bar(t) - sigma_bar(s), Q(y, x) the forward rate from y to x, K = exp(delta Q)
(``step_probs``, one categorical per position, tau-leaping):

- Euler:    p(y) = delta Q(y, x) s_y for y != x = xt^l, and p(x) = 1 - sum_{y != x} p(y).
- analytic: p(y) proportional to [s^T exp(-delta Q)]_y K(y, x) (SEDD's Tweedie tau-leaping).
  absorb, x = m:  p(y) = (e^delta - 1) s_y, p(m) = 1 - (e^delta - 1) sum_{y != m} s_y; with the exact ratios this is
                  MDLM's reveal probability (alpha_s - alpha_t) / (1 - alpha_t) times p(x0 = y | xt).
  uniform:        p(y) ∝ [e^delta s_y + (1 - e^delta) S / N] [e^-delta [y = x] + (1 - e^-delta) / N], S = sum_z s_z.
Negative values (possible with a model's ratios) are clipped to 0. ``final`` (the step to t = 0) is the denoising
step: the analytic step with delta = sigma_bar(t), and (absorb) no mass on the mask.
"""

from __future__ import annotations

import math

import torch

from dlm.errors import DlmError
from dlm.noise.schedules import Schedule

GRAPH_NAMES = ("absorb", "uniform")
METHODS = ("euler", "analytic")


def sigma_bar(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """Total noise -log alpha(t), in float64."""
    return -schedule.alpha(t.double()).log()


def absorb_shift(total_noise: torch.Tensor, V: int) -> torch.Tensor:
    """log(e^sigma_bar - 1) + log(V - 1): what the absorbing graph subtracts from the logits, [B]."""
    return torch.log(torch.expm1(total_noise)) + math.log(V - 1)


def log_ratios(
    logits: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, *, graph: str, schedule: Schedule
) -> torch.Tensor:
    """SEDD's output scaling: logits [B, L, V] at times t [B] -> log s [B, L, V] (float32, or float64 for float64
    logits), with log s = 0 at y = xt^l."""
    if graph not in GRAPH_NAMES:
        raise DlmError(f"unknown graph {graph!r}; choose one of: {', '.join(GRAPH_NAMES)}")
    log_s = logits.double() if logits.dtype == torch.float64 else logits.float()
    if graph == "absorb":
        log_s = log_s - absorb_shift(sigma_bar(schedule, t), logits.shape[-1]).to(log_s.dtype)[:, None, None]
    return log_s.scatter(-1, xt[..., None], 0.0)


def _absorb_probs(log_s, x, delta: float, method: str, final: bool, mask_id: int) -> torch.Tensor:
    """Step probabilities [B, L, V] in float64 (only masked positions are drawn from them)."""
    m = torch.tensor([mask_id], device=x.device)
    rate = delta if method == "euler" else math.expm1(delta)
    p = rate * log_s.exp().index_fill(-1, m, 0.0)  # (B, L, V): the jumps y != m
    stay = torch.zeros_like(p[..., 0]) if final else (1.0 - p.sum(-1)).clamp_min(0.0)  # (B, L): p(m)
    return p.index_copy(-1, m, stay[..., None])


def _uniform_probs(log_s, x, delta: float, method: str, final: bool, mask_id: int) -> torch.Tensor:
    N = log_s.shape[-1]
    s = log_s.exp()  # (B, L, N), s_x = 1
    own = torch.nn.functional.one_hot(x, N).double()  # (B, L, N)
    if method == "euler" and not final:
        p = delta / N * s * (1.0 - own)  # the jumps y != x
        return p + own * (1.0 - p.sum(-1, keepdim=True)).clamp_min(0.0)
    back = math.exp(delta) * s + (1.0 - math.exp(delta)) * s.sum(-1, keepdim=True) / N  # [s^T exp(-delta Q)]_y
    fwd = own * math.exp(-delta) + (1.0 - math.exp(-delta)) / N  # K(y, x)
    return back.clamp_min(0.0) * fwd


def step_probs(
    graph: str, log_s: torch.Tensor, x: torch.Tensor, delta: float, method: str, final: bool, mask_id: int
) -> torch.Tensor:
    """The reverse step's probabilities [B, L, V] in float64 at every position (module docstring)."""
    if method not in METHODS:
        raise DlmError(f"unknown SEDD step {method!r}; choose one of: {', '.join(METHODS)}")
    probs = _absorb_probs if graph == "absorb" else _uniform_probs
    return probs(log_s, x, delta, "analytic" if final else method, final, mask_id)
