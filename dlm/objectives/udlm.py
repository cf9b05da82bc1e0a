"""Uniform-state diffusion (UDLM, Schiff et al. 2025): uniform noise, a denoiser that predicts x0, a valid NELBO.

Forward process: each token independently becomes a uniformly random id (of all N = vocab_size ids, possibly
itself) w.p. 1 - alpha(t) (``dlm.noise.uniform_tokens``), so nothing marks which tokens are noise and a sampler
may revise any token at any step. The model is time-conditioned (how noisy xt is cannot be read off it) and
predicts x0: x_theta(xt, t)_l = softmax(logits_l), with no mass on the mask id (SUBS: data never holds it).

Mean parameterisation: the reverse process plugs x_theta into the forward kernel's posterior as if it were x0,
i.e. position l's noisy marginal is xbar_t = alpha(t) x_theta + (1 - alpha(t)) / N, and the ratios of the reverse
rates are

    s_y = xbar_t[y] / xbar_t[xt^l]          (``mean_log_ratios``)

UDLM's continuous-time NELBO is then SEDD's denoising score entropy on the uniform graph
(``dlm.objectives.score_entropy``) with these ratios: the same integral, estimator, t_min and prior term, so
``udlm_nelbo`` reads the model through ``MeanRatios`` and calls ``score_entropy_nelbo``. It is tight when the
ratios are the data's exact ones, which holds when x_theta(xt)_l = p(x0^l | xt^{-l}), position l's conditional given
the other noisy tokens (then xbar_t is p(xt^l = . | xt^{-l})). The sampler (``udlm`` in ``dlm.samplers``) is the
ancestral step p(z_s = y | z_t) proportional to (alpha_{t|s} [y = z_t] + (1 - alpha_{t|s}) / N)
(alpha_s x_theta[y] + (1 - alpha_s) / N), which is SEDD's analytic step with these ratios.
"""

from __future__ import annotations

import torch

from dlm.noise import get_schedule
from dlm.noise.schedules import Schedule
from dlm.noise.uniform import mean_log_ratios
from dlm.objectives.base import LossOutput, Objective
from dlm.objectives.score_entropy import score_entropy_loss, score_entropy_nelbo


class MeanRatios:
    """A UDLM model seen as a SEDD ratio model on the uniform graph: ``(xt, t, **kw) -> log ratios``."""

    def __init__(self, model, schedule: str | Schedule, mask_id: int):
        self.model, self.schedule, self.mask_id = model, get_schedule(schedule), mask_id

    def __call__(self, xt: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        return mean_log_ratios(self.model(xt, t, **kw), xt, t, schedule=self.schedule, mask_id=self.mask_id)


def udlm_nelbo(
    model,
    x0: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    schedule: str | Schedule = "loglinear",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
) -> torch.Tensor:
    """Per-sequence UDLM NELBO in nats, [B]: the mean of ``num_samples`` draws of t.

    ``model(xt: LongTensor[B, L], t: FloatTensor[B]) -> x0 logits [B, L, N]`` can be any callable; N must be
    ``vocab_size``, the ids the noise draws from."""
    return score_entropy_nelbo(
        MeanRatios(model, schedule, mask_id),
        x0,
        graph="uniform",
        mask_id=mask_id,
        vocab_size=vocab_size,
        schedule=schedule,
        num_samples=num_samples,
        generator=generator,
        antithetic=antithetic,
        t_min=t_min,
    )


class UDLM(Objective):
    """Uniform-state diffusion with the mean parameterisation; ``nll`` is ``udlm_nelbo``."""

    name = "udlm"
    samplers = ("udlm",)

    @classmethod
    def configure(cls, run_config) -> None:
        """A known schedule and a time-conditioned model (the noise level of a uniformly noised sequence cannot be
        read off it)."""
        get_schedule(run_config.train.schedule)  # an unknown name lists the valid ones
        run_config.model.time_conditioning = True

    def loss(self, model, batch, generator) -> LossOutput:
        """The NELBO of one draw per sequence, in nats per token: SEDD's loss on the mean ratios."""
        return score_entropy_loss(
            MeanRatios(model, self.schedule, self.mask_id),
            batch,
            graph="uniform",
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            schedule=self.schedule,
            generator=generator,
            antithetic=self.antithetic,
        )

    def nll(self, model, x0, num_samples, generator) -> torch.Tensor:
        return udlm_nelbo(
            model,
            x0,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            schedule=self.schedule,
            num_samples=num_samples,
            generator=generator,
        )
