"""Diffusion-LM's reverse process: a Gaussian sampler in embedding space with the clamping trick, then rounding.

From z_1 ~ N(0, I) [B, L, E], DDPM, DDIM or DPM-Solver++(2M) of ``dlm.samplers.ode`` runs down the grid
1 = t_0 > ... > t_T = t_min (uniform in t) with the x0-predicting denoiser

    x0_hat(z_t, t) = clamp(model.forward_embeds(z_t, t)),           clamp(x)^l = E[argmin_v ||x^l - E_v||^2]

(the clamping trick of Li et al. 2022, sec. 4.2: every step's estimate of x0 snaps to the nearest word embedding,
so the sampler commits to words). Prompt positions stay on their own noised embeddings: the model sees
alpha_t e + sigma_t eps_p there (eps_p drawn once) and x0_hat = e. The last latent is rounded the same way, to the
nearest embedding of z_{t_min} / alpha_{t_min} (as the paper's code rounds; the training decoder's argmax
head(x0) = x0 E^T would favour embeddings of large norm). Tokens in ``exclude`` (mask, pad: never in the data) are
never candidates, neither for clamping nor for rounding.

Euler and Heun on the PF-ODE are left out: they step with alpha'(t), which vp-sqrt makes singular at t = 1
(alpha ~ sqrt(1 - t): alpha' = -2500 at alpha_1 = 1e-4), so their first steps overshoot by orders of magnitude; the
three above use alpha and sigma only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm.models.transformer import call_method, unwrap
from dlm.noise.gaussian import expand_to, first_latent_time, get_gaussian_schedule
from dlm.samplers.base import MODEL, SampleBatch, SampleOutput, SamplerConfig, SampleState
from dlm.samplers.ode import ODE_SAMPLERS, time_grid


@dataclass(frozen=True)
class EmbeddingConfig(SamplerConfig):
    steps: int | None = None  # ODE steps (default: one per generated token); one model call each
    schedule: str = field(default="vp-sqrt", metadata=MODEL)


class _Stop(Exception):
    """``on_step`` asked to stop inside the ODE solver's loop."""


def nearest_tokens(x: torch.Tensor, weight: torch.Tensor, exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """argmin_v ||x - E_v||^2 for x [..., E] and the table ``weight`` E [V, E] -> ids [...], in float64."""
    E = weight.double()  # (V, E)
    scores = 2.0 * x.double() @ E.T - E.pow(2).sum(-1)  # (..., V): -||x - E_v||^2 + ||x||^2
    if exclude:
        scores[..., list(exclude)] = float("-inf")
    return scores.argmax(-1)


def clamp_to_embeddings(
    x: torch.Tensor, weight: torch.Tensor, exclude: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clamping trick: (the nearest embedding of every vector of x [..., E], its token id [...])."""
    ids = nearest_tokens(x, weight, exclude)
    return weight[ids].to(x.dtype), ids


@torch.no_grad()
def diffusion_lm_generate(
    model,
    prompt: torch.Tensor,
    *,
    gen_length: int,
    steps: int,
    schedule: str = "vp-sqrt",
    ode_sampler: str = "ddpm",
    clamp: bool = True,
    exclude: tuple[int, ...] = (),
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    on_step=None,
) -> tuple[torch.Tensor, int]:
    """prompt [B, Lp] -> (tokens [B, Lp + gen_length], model calls). ``model`` has the continuous path of the
    model contract (``embed``, ``embedding_weight``, ``forward_embeds``); ``ode_sampler`` names an entry of
    ``ODE_SAMPLERS``; ``on_step`` sees each step's clamped x0_hat as provisional tokens and may stop the solver
    (the sample is then that x0_hat's tokens)."""
    sample = ODE_SAMPLERS.get(ode_sampler)
    schedule = get_gaussian_schedule(schedule)
    t_min = first_latent_time(schedule) if t_min is None else t_min
    net = unwrap(model)
    weight = net.embedding_weight  # (V, E)
    B, Lp = prompt.shape
    # the sampler's state is float64: the PF-ODE drift f x - g^2 score / 2 cancels terms of size |f| ~ 1 / alpha^2
    # near t = 1 (alpha_1 = 1e-4), which float32 cannot resolve; the model still runs in its own dtype
    e_prompt = net.embed(prompt).double()  # (B, Lp, E)
    eps_prompt = torch.randn(e_prompt.shape, generator=generator, dtype=torch.float64, device=weight.device)
    z = torch.randn(
        (B, Lp + gen_length, weight.shape[1]), generator=generator, dtype=torch.float64, device=weight.device
    )  # (B, L, E): z_1 ~ N(0, I)

    def denoiser(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # 1. prompt positions on their noised embeddings
        alpha, sigma = expand_to(schedule.alpha(t), e_prompt), expand_to(schedule.sigma(t), e_prompt)
        z_t = torch.cat([alpha * e_prompt + sigma * eps_prompt, z_t[:, Lp:]], dim=1)  # (B, L, E)
        # 2. predict x0, 3. clamp it to the nearest word embeddings
        x0_hat = call_method(model, "forward_embeds", z_t.to(weight.dtype), t.to(weight.dtype)).double()  # (B, L, E)
        calls.append(1)
        if clamp or on_step is not None:
            clamped, ids = clamp_to_embeddings(x0_hat[:, Lp:], weight, exclude)  # (B, Lg, E), (B, Lg)
            if on_step is not None:
                x = torch.cat([prompt, ids], dim=1)
                last[0] = x
                committed = torch.zeros_like(x, dtype=torch.bool)
                committed[:, :Lp] = True
                if on_step(SampleState(x, committed, len(calls), len(calls), provisional=x)) is False:
                    raise _Stop
            if clamp:
                x0_hat = torch.cat([x0_hat[:, :Lp], clamped], dim=1)
        return torch.cat([e_prompt, x0_hat[:, Lp:]], dim=1)

    calls: list[int] = []
    last: list[torch.Tensor | None] = [None]
    times = time_grid(steps, t_min=t_min)  # (steps + 1,) float64, 1 -> t_min
    try:
        z, nfe = sample(denoiser, z, times, schedule=schedule, target="x0", generator=generator)
    except _Stop:
        return last[0], len(calls)
    # 4. round the last latent: the nearest word embedding of z_{t_min} / alpha_{t_min}
    tokens = nearest_tokens(z[:, Lp:] / schedule.alpha(times[-1]).item(), weight, exclude)  # (B, Lg)
    return torch.cat([prompt, tokens], dim=1), nfe


def embedding_sampler(ode_sampler: str):
    """The registered ``embed-NAME`` sampler: ``ode_sampler`` in embedding space with the clamping trick. One
    generator for the batch (the ODE solvers draw for the whole batch at once); the wrapper runs rows one by one
    when there is one per row. Mask and pad ids are never candidates."""

    def generate(model, batch: SampleBatch, config: EmbeddingConfig, generators=None, on_step=None) -> SampleOutput:
        exclude = tuple(i for i in (batch.mask_id, batch.pad_id) if i is not None)
        tokens, nfe = diffusion_lm_generate(
            model,
            batch.prompt,
            gen_length=batch.gen_length,
            steps=config.steps or batch.gen_length,
            schedule=config.schedule,
            ode_sampler=ode_sampler,
            exclude=exclude,
            generator=generators,
            on_step=on_step,
        )
        return SampleOutput(tokens, nfe)

    generate.__name__ = f"embed_{ode_sampler.replace('-', '_')}"
    return generate
