"""Score entropy discrete diffusion (SEDD, Lou, Meng & Ermon 2024): the denoising score entropy bound.

Every position follows a continuous-time Markov chain with rate sigma(t) Q and total noise
sigma_bar(t) = int_0^t sigma = -log alpha(t), so its kernel is p_t(. | x0) = exp(sigma_bar Q)(x0, .). SEDD's
log-linear noise is our ``loglinear`` schedule: sigma_bar(t) = -log(1 - (1 - eps) t), sigma(t) = -alpha'/alpha.
``GRAPHS`` holds the two generators Q (Q(y, x): the forward rate from y to x):

- ``absorb``:  Q(y, m) = 1 for every y != m, no other jumps: the masked process (``dlm.noise.mask_tokens``).
- ``uniform``: Q = (1 1^T - N I) / N over all N = vocab_size ids: w.p. 1 - alpha a token is replaced by a uniformly
  random id, possibly itself (``dlm.noise.uniform_tokens``).

The model's logits are read as log ratios log s_theta(xt, t)_{l,y} ~ log p_t(xt with x^l = y) / p_t(xt)
(``log_ratios``, SEDD's output scaling; the entry y = xt^l is 1 by definition):

- absorb:  log s = logits - log(e^sigma_bar - 1) - log(V - 1), V = the logits' width. Logits = 0 give
  sum_{y != m} s_y = 1 / (e^sigma_bar - 1) = alpha / (1 - alpha), the total of the exact ratios; the exact model is
  logits_y = log(V - 1) + log p(x0^l = y | xt), which does not depend on t (no time conditioning needed).
- uniform: log s = logits (the exact ratios move with t: the model must be time-conditioned).

NELBO of one sequence (SEDD eq. 18, the diffusion-weighted denoising score entropy, + the prior term):

    -log p(x0) <= int_0^1 E_{xt ~ p_t(.|x0)} sum_l sum_{y != xt^l} sigma(t) Q(y, xt^l) [s_y - r_y log s_y + K(r_y)] dt
                  + KL(p_1(. | x0) || p_base)

with r_y = p_t(y | x0^l) / p_t(xt^l | x0^l) the ratio of the forward kernels and K(r) = r (log r - 1). It is tight
when s is the data's exact ratio and p_base = p_1. Each bracket is computed as r (e^u - 1 - u), u = log s - log r
(its Bregman form: no cancellation of large terms), or as s where r = 0. The true ratios:

- absorb, xt^l = m: r = alpha / (1 - alpha) = 1 / (e^sigma_bar - 1) at y = x0^l, 0 elsewhere; unmasked positions
  have no incoming jumps and cost nothing. sigma * r = -alpha' / (1 - alpha) = w(t): with the exact ratios the
  integrand is MDLM's, w(t) sum_masked -log p(x0^l | xt).
- uniform, with rho = (1 - alpha) / (1 + (N - 1) alpha): r_y = rho for every y where xt^l = x0^l; where
  xt^l != x0^l, r = 1 / rho at y = x0^l and 1 elsewhere.

Estimator and what it leaves out: t ~ U[t_min, 1] (antithetic), times (1 - t_min): the integral over [0, t_min]
is dropped (O(t_min) nats per token, as in ``masked_nelbo``). Prior: uniform graph, p_base is uniform and
KL(p_1(.|x0) || p_base) = L [(alpha_1 + (1 - alpha_1)/N) log(1 + (N - 1) alpha_1) + (N - 1)(1 - alpha_1)/N
log(1 - alpha_1)] is added exactly (alpha_1 = alpha(1)); absorb graph, p_base is all masks and the term is taken as
0 as in MDLM: exact when alpha(1) = 0, while ``loglinear`` has alpha(1) = eps = 1e-3, which leaves out the noisiest
alpha in [0, eps] of the any-order average (O(eps) nats per token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from dlm.errors import DlmError
from dlm.noise import SCHEDULES, get_schedule, mask_tokens, sample_times, uniform_tokens
from dlm.noise.graphs import absorb_shift, log_ratios
from dlm.noise.schedules import Schedule
from dlm.objectives.base import LossOutput, Objective, monte_carlo
from dlm.registry import Registry


def _absorb_entropy(log_s, xt, x0, alpha, mask_id: int) -> torch.Tensor:
    """sum_{y != m} [s_y - r_y log s_y + K(r_y)] at masked positions, 0 elsewhere: [B, L]."""
    log_r = (alpha.log() - torch.log1p(-alpha)).to(log_s.dtype)[:, None]  # (B, 1) log(alpha / (1 - alpha))
    # y not in {m, x0}: r = 0, the bracket is s_y
    others = log_s.index_fill(-1, torch.tensor([mask_id], device=xt.device), float("-inf"))
    others = others.scatter(-1, x0[..., None], float("-inf")).logsumexp(-1).exp()  # (B, L)
    # y = x0: r (e^u - 1 - u), u = log s - log r
    u = log_s.gather(-1, x0[..., None]).squeeze(-1) - log_r  # (B, L)
    bracket = others + log_r.exp() * (torch.expm1(u) - u)
    return torch.where(xt == mask_id, bracket, torch.zeros_like(bracket))


def _uniform_entropy(log_s, xt, x0, alpha, mask_id: int) -> torch.Tensor:
    """sum_{y != xt^l} (1 / N) [s_y - r_y log s_y + K(r_y)] at every position: [B, L] (``mask_id`` is unused: the
    uniform graph has no mask)."""
    N = log_s.shape[-1]
    log_rho = (torch.log1p(-alpha) - torch.log1p((N - 1) * alpha)).to(log_s.dtype)[:, None]  # (B, 1)
    clean = xt == x0  # (B, L)
    zero = torch.zeros_like(log_rho)
    log_r = torch.where(clean, log_rho, zero)[..., None].expand_as(log_s)  # (B, L, N): rho or 1
    log_r = log_r.scatter(-1, x0[..., None], torch.where(clean, log_rho, -log_rho)[..., None])  # 1/rho at x0
    u = log_s - log_r
    bracket = log_r.exp() * (torch.expm1(u) - u)  # (B, L, N), every r > 0
    bracket = bracket.scatter(-1, xt[..., None], 0.0)  # y = xt^l is not a jump
    return bracket.sum(-1) / N


def _uniform_prior(alpha_1: float, N: int) -> float:
    """KL(p_1(. | x0) || uniform) of one position, nats."""
    keep = alpha_1 + (1.0 - alpha_1) / N
    return keep * math.log1p((N - 1) * alpha_1) + (N - 1) * (1.0 - alpha_1) / N * math.log1p(-alpha_1)


@dataclass(frozen=True)
class Graph:
    """One SEDD graph: its forward draw, the logits shift of the output scaling, the score entropy at one time
    (without sigma(t)), and the prior KL per position."""

    corrupt: Callable[..., torch.Tensor]  # (x0, t, schedule, *, mask_id, vocab_size, generator) -> xt
    shift: Callable[[torch.Tensor, int], torch.Tensor] | None  # (sigma_bar [B], V) -> [B], subtracted from logits
    entropy: Callable[..., torch.Tensor]  # (log_s, xt, x0, alpha [B] float64, mask_id) -> [B, L]
    prior: Callable[[float, int], float]  # (alpha(1), V) -> nats per position


def _corrupt_absorb(x0, t, schedule, *, mask_id, vocab_size, generator):
    return mask_tokens(x0, t, schedule, mask_id, generator)[0]


def _corrupt_uniform(x0, t, schedule, *, mask_id, vocab_size, generator):
    if vocab_size is None:
        raise DlmError("the uniform graph needs vocab_size (the number of ids a token can be replaced by)")
    return uniform_tokens(x0, t, schedule, vocab_size, generator)[0]


GRAPHS: Registry[Graph] = Registry("graph")
GRAPHS.register("absorb", Graph(_corrupt_absorb, absorb_shift, _absorb_entropy, prior=lambda alpha_1, V: 0.0))
GRAPHS.register("uniform", Graph(_corrupt_uniform, None, _uniform_entropy, prior=_uniform_prior))


def _draw(model, x0, t, schedule: Schedule, graph: str, mask_id: int, vocab_size: int | None, generator):
    """One Monte Carlo draw at times t [B]: (the integrand sum_l sigma(t) [...] per sequence [B], noised fraction)."""
    g = GRAPHS.get(graph)
    # 1. corrupt x0 along the graph
    xt = g.corrupt(x0, t, schedule, mask_id=mask_id, vocab_size=vocab_size, generator=generator)  # (B, L)
    # 2. the model's log ratios at xt
    logits = model(xt, t)  # (B, L, V)
    if vocab_size is not None and logits.shape[-1] != vocab_size:
        raise DlmError(f"the model returns {logits.shape[-1]} logits per position, the graph has {vocab_size} ids")
    log_s = log_ratios(logits, xt, t, graph=graph, schedule=schedule)  # (B, L, V)
    # 3. score entropy against the true ratios, weighted by sigma(t) = -alpha'/alpha
    td = t.double()
    alpha = schedule.alpha(td)  # (B,)
    sigma = (-schedule.dalpha(td) / alpha).to(log_s.dtype)  # (B,)
    integrand = sigma * g.entropy(log_s, xt, x0, alpha, mask_id).sum(-1)  # (B,)
    return integrand, (xt != x0).float().mean()


def _prior(graph: str, schedule: Schedule, L: int, V: int | None) -> float:
    """L * KL(p_1(. | x0) || p_base), nats per sequence."""
    alpha_1 = schedule.alpha(torch.tensor(1.0, dtype=torch.float64)).item()
    return L * GRAPHS.get(graph).prior(alpha_1, V)


def score_entropy_nelbo(
    model,
    x0: torch.Tensor,
    *,
    graph: str = "absorb",
    mask_id: int,
    vocab_size: int | None = None,
    schedule: str | Schedule = "loglinear",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
) -> torch.Tensor:
    """Per-sequence SEDD NELBO in nats, [B] (module docstring): the mean of ``num_samples`` draws of t.

    ``model(xt: LongTensor[B, L], t: FloatTensor[B]) -> logits [B, L, V]`` can be any callable; its logits are read
    through ``log_ratios``. ``vocab_size`` (= V) is required for the uniform graph, whose noise draws from it.
    """
    schedule = get_schedule(schedule)
    mean = monte_carlo(
        lambda t: _draw(model, x0, t, schedule, graph, mask_id, vocab_size, generator)[0],
        lambda n: sample_times(n, generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device),
        num_samples=num_samples,
        batch_size=x0.shape[0],
        device=x0.device,
        dtype=torch.float64,
    )
    return (1.0 - t_min) * mean + _prior(graph, schedule, x0.shape[1], vocab_size)


def score_entropy_loss(
    model,
    x0: torch.Tensor,
    *,
    graph: str,
    mask_id: int,
    vocab_size: int | None,
    schedule: str | Schedule,
    generator: torch.Generator | None,
    antithetic: bool = True,
    t_min: float = 1e-3,
) -> LossOutput:
    """Training loss of SEDD (and UDLM's mean ratios): the NELBO of one draw per sequence, in nats per token
    (float32); metric ``noised_frac``."""
    schedule = get_schedule(schedule)
    B, L = x0.shape
    t = sample_times(B, generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device)  # (B,)
    integrand, noised = _draw(model, x0, t, schedule, graph, mask_id, vocab_size, generator)
    nelbo = (1.0 - t_min) * integrand.float() + _prior(graph, schedule, L, vocab_size)  # (B,)
    return LossOutput(loss=nelbo.mean() / L, metrics={"noised_frac": noised.detach()})


class SEDD(Objective):
    """Score entropy discrete diffusion on the ``absorb`` or ``uniform`` graph; ``nll`` is ``score_entropy_nelbo``."""

    name = "sedd"
    samplers = ("sedd-analytic", "sedd-euler")

    @dataclass(frozen=True)
    class Config:
        graph: str = "absorb"  # absorb (masking) or uniform, see GRAPHS

        def __post_init__(self):
            GRAPHS.get(self.graph)  # an unknown name lists the valid ones

    @classmethod
    def configure(cls, run_config) -> None:
        """The log-linear schedule, and time conditioning for the uniform graph (its ratios depend on t; the
        absorbing graph's scaling makes t optional)."""
        schedule = run_config.train.schedule
        if schedule != "loglinear":
            known = schedule in SCHEDULES
            raise DlmError(
                f"--objective sedd uses the loglinear schedule (SEDD's log-linear total noise), not "
                f"{schedule!r}{'' if known else ' (unknown)'}; drop --schedule"
            )
        if run_config.objective_config().graph == "uniform":
            run_config.model.time_conditioning = True

    def loss(self, model, batch, generator) -> LossOutput:
        return score_entropy_loss(
            model,
            batch,
            graph=self.config.graph,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            schedule=self.schedule,
            generator=generator,
            antithetic=self.antithetic,
        )

    def nll(self, model, x0, num_samples, generator) -> torch.Tensor:
        return score_entropy_nelbo(
            model,
            x0,
            graph=self.config.graph,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            schedule=self.schedule,
            num_samples=num_samples,
            generator=generator,
        )
