"""Diffusion-LM (Li et al. 2022): Gaussian diffusion on learned word embeddings, x0-prediction, a rounding decoder.

Notation: w [B, L] the tokens; e = E[w] [B, L, E] their embeddings in the model's learned table (E =
``model.embed_dim``, 16 unless set); z_t = alpha_t e + sigma_t eps on a Gaussian schedule (``vp-sqrt``, the paper's,
by default); x0_hat(z_t, t) = model.forward_embeds(z_t, t) [B, L, E], the backbone's continuous path. The
rounding decoder reads the first latent z_{t_min}, i.e. the paper's x_0 = e + (sigma/alpha)_{t_min} noise:

    p(w | z_{t_min}) = prod_l softmax(logits(z_{t_min}^l / alpha_{t_min}))[w^l]    (the head; E^T when tied)

Training loss, per token: the paper's end-to-end L_simple (sec. 4.1) with its x_T term, as in its code:

    L(w) = E_{t ~ U[t_min, 1], eps} mean_{l,d} (x0_hat(z_t, t) - e)^2      L_simple: unweighted x0-MSE
         + mean_l -log p(w^l | z_{t_min})                                  rounding
         + mean_{l,d} (alpha_1 e)^2                                        prior: the mean of x_T goes to 0

Gradients reach the embeddings through all three terms. The MSE alone would collapse every embedding onto one
point (x0 is then trivial to predict); the rounding term, whose noise has the fixed scale (sigma/alpha)_{t_min}
= 0.1, pushes the embeddings of different words apart; the MSE at high noise and the prior term keep
their norms from growing without bound (the prior term alone is tiny: alpha_1 = 1e-4).

The model is used through its contract only: ``embed``, ``forward_embeds``, ``logits``. Under DDP (and
torch.compile) the objective gets the wrapped model. x0_hat runs through the wrapper (``call_method``): that call is
DDP's forward of the step, which arms its gradient all-reduce for the backward. The embeddings e and the rounding
logits use the model inside (``unwrap``): their gradients land in the same parameters (the table, the head) during
the same backward, so the armed reducer all-reduces them with the others; every parameter gets a gradient each
step, as DDP without ``find_unused_parameters`` expects. (Calling ``forward_embeds`` on the inner model as well
would run no DDP forward at all, and no gradient would be synchronised.)

NELBO (``dlm eval``), an upper bound on -log p(w) in nats per sequence: VDM's continuous-time bound (Kingma et al.
2021) with the data e = E[w] and this decoder,

    -log p(w) <= E_{q(z_{t_min} | w)} -log p(w | z_{t_min})                                reconstruction
               + sum_{l,d} KL(N(alpha_1 e, sigma_1^2) || N(0, 1))                            prior (exact)
               + (1 - t_min) E_{t ~ U[t_min, 1]} [ -SNR'(t) / 2 sum_{l,d} (x0_hat(z_t, t) - e)^2 ]    diffusion

t_min is where sigma / alpha = 0.1 (the paper's x_0 noise, SNR = 100) on every schedule: 9.8e-5 on vp-sqrt (the
paper's offset s = 1e-4), 0.056 on vp-cosine. The continuous-time diffusion term depends on the schedule only
through the SNR at its two ends, so the bound is the same on every schedule in expectation; its Monte Carlo
variance is not. It weights the x0 error by -SNR'(t) / 2 where training weights it by 1, so the bound of a model
trained on L_simple is valid but loose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.models.transformer import call_method, unwrap
from dlm.noise.gaussian import (
    GAUSSIAN_SCHEDULES,
    GaussianSchedule,
    add_noise,
    first_latent_time,
    get_gaussian_schedule,
)
from dlm.noise.schedules import sample_times
from dlm.objectives.base import LossOutput, Objective, monte_carlo

DEFAULT_EMBED_DIM = 16  # the paper's embedding width on E2E (it used 128 on ROCStories)


def rounding_nll(net, e: torch.Tensor, w: torch.Tensor, noise_ratio: float, generator) -> torch.Tensor:
    """-log p(w | z_{t_min}) per token [B, L]: net.logits(e + (sigma/alpha)_{t_min} eps), cross-entropy in float32."""
    x0 = e + noise_ratio * torch.randn(e.shape, generator=generator, dtype=e.dtype, device=e.device)  # (B, L, E)
    logits = net.logits(x0).float()  # (B, L, V)
    return F.cross_entropy(logits.flatten(0, 1), w.flatten(), reduction="none").view(w.shape)


def _ends(schedule: GaussianSchedule, t_min: float) -> tuple[float, float, float]:
    """(sigma/alpha at t_min, alpha_1, sigma_1) as floats."""
    ends = torch.tensor([t_min, 1.0], dtype=torch.float64)
    alpha, sigma = schedule.alpha(ends), schedule.sigma(ends)
    return (sigma[0] / alpha[0]).item(), alpha[1].item(), sigma[1].item()


def diffusion_lm_nelbo(
    model,
    x0: torch.Tensor,
    *,
    schedule: str | GaussianSchedule = "vp-sqrt",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float | None = None,
) -> torch.Tensor:
    """The NELBO of the module docstring in nats per sequence, [B]: an upper bound on -log p(x0), averaged over
    ``num_samples`` Monte Carlo draws of (t, eps) per sequence (antithetic times over all draws)."""
    schedule = get_gaussian_schedule(schedule)
    t_min = first_latent_time(schedule) if t_min is None else t_min
    net = unwrap(model)
    noise_ratio, alpha_1, sigma_1 = _ends(schedule, t_min)
    e = net.embed(x0).float()  # (B, L, E)
    # prior: KL(N(alpha_1 e, sigma_1^2) || N(0, 1)) per coordinate, summed (exact)
    prior = 0.5 * ((alpha_1 * e).pow(2) + sigma_1**2 - 1.0 - 2.0 * math.log(sigma_1)).sum((1, 2))

    def draw(t: torch.Tensor) -> torch.Tensor:  # (B,) float64
        # reconstruction: -log p(w | z_{t_min}), summed over positions
        reconstruction = rounding_nll(net, e, x0, noise_ratio, generator).sum(-1).double()
        # diffusion: -SNR'(t) / 2 * the summed squared x0 error, times the length of [t_min, 1]
        z_t, _ = add_noise(e, t.float(), schedule, generator)  # (B, L, E)
        x0_hat = call_method(model, "forward_embeds", z_t, t.float())  # (B, L, E)
        sq_err = (x0_hat.float() - e).pow(2).sum((1, 2)).double()  # (B,)
        dsnr = 2.0 * schedule.snr(t) * (schedule.f(t) - schedule.dsigma(t) / schedule.sigma(t))  # d SNR / dt
        return reconstruction + (1.0 - t_min) * (-0.5 * dsnr) * sq_err

    mean = monte_carlo(
        draw,
        lambda n: sample_times(n, generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device).double(),
        num_samples=num_samples,
        batch_size=x0.shape[0],
        device=x0.device,
        dtype=torch.float64,
    )
    return prior.double() + mean


class DiffusionLM(Objective):
    """Diffusion-LM: Gaussian diffusion on learned embeddings; ``loss`` is L_simple + rounding + prior (metrics mse,
    rounding, prior), ``nll`` is ``diffusion_lm_nelbo``. ``schedule`` is a Gaussian one (``vp-sqrt`` by default)."""

    name = "diffusion-lm"
    samplers = ("embed-ddpm", "embed-ddim", "embed-dpmpp-2m")
    default_schedule = "vp-sqrt"

    @classmethod
    def configure(cls, run_config) -> None:
        """A Gaussian ``train.schedule``, a time-conditioned model, and an embedding space of ``model.embed_dim``
        (``DEFAULT_EMBED_DIM`` when 0)."""
        if run_config.train.schedule not in GAUSSIAN_SCHEDULES:
            raise DlmError(
                f"--objective diffusion-lm needs a Gaussian schedule, not {run_config.train.schedule!r}; "
                f"pass --schedule with one of: {', '.join(GAUSSIAN_SCHEDULES.names())}"
            )
        run_config.model.time_conditioning = True
        if run_config.model.embed_dim == 0:
            run_config.model.embed_dim = DEFAULT_EMBED_DIM

    def loss(self, model, batch, generator) -> LossOutput:
        """L_simple + rounding + prior (module docstring) for tokens x0 [B, L]."""
        x0 = batch
        schedule = get_gaussian_schedule(self.schedule)
        t_min = first_latent_time(schedule)
        net = unwrap(model)  # the side paths (module docstring: DDP)
        noise_ratio, alpha_1, _ = _ends(schedule, t_min)
        # 1. embed the tokens: the clean data of the diffusion
        e = net.embed(x0)  # (B, L, E)
        # 2. sample t, noise the embeddings, predict x0 (the continuous path)
        t = sample_times(
            x0.shape[0], generator=generator, antithetic=self.antithetic, t_min=t_min, device=x0.device
        )  # (B,)
        z_t, _ = add_noise(e, t.to(e.dtype), schedule, generator)  # (B, L, E)
        x0_hat = call_method(model, "forward_embeds", z_t, t)  # (B, L, E), through DDP's forward
        mse = (x0_hat.float() - e.float()).pow(2).mean()
        # 3. rounding: the decoder p(w | z_{t_min}) on a fresh draw of the first latent
        rounding = rounding_nll(net, e, x0, noise_ratio, generator).mean()
        # 4. prior: the mean alpha_1 e of x_T towards 0
        prior = (alpha_1 * e.float()).pow(2).mean()
        return LossOutput(
            loss=mse + rounding + prior,
            metrics={"mse": mse.detach(), "rounding": rounding.detach(), "prior": prior.detach()},
        )

    def nll(self, model, x0, num_samples, generator) -> torch.Tensor:
        return diffusion_lm_nelbo(model, x0, schedule=self.schedule, num_samples=num_samples, generator=generator)
