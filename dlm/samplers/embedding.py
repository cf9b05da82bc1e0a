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

import torch

from dlm.noise.gaussian import expand_to, get_gaussian_schedule
from dlm.models.transformer import call_method, unwrap
from dlm.objectives.embedding import first_latent_time
from dlm.samplers.ode import ODE_SAMPLERS, time_grid


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
    history: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """prompt [B, Lp] -> (tokens [B, Lp + gen_length], model calls). ``model`` has the continuous path of the
    model contract (``embed``, ``embedding_weight``, ``forward_embeds``); ``ode_sampler`` names an entry of ``ODE_SAMPLERS``; ``history`` gets each step's x0_hat as tokens."""
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
    z = torch.randn((B, Lp + gen_length, weight.shape[1]), generator=generator, dtype=torch.float64,
                    device=weight.device)  # (B, L, E): z_1 ~ N(0, I)

    def denoiser(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # 1. prompt positions on their noised embeddings
        alpha, sigma = expand_to(schedule.alpha(t), e_prompt), expand_to(schedule.sigma(t), e_prompt)
        z_t = torch.cat([alpha * e_prompt + sigma * eps_prompt, z_t[:, Lp:]], dim=1)  # (B, L, E)
        # 2. predict x0, 3. clamp it to the nearest word embeddings
        x0_hat = call_method(model, "forward_embeds", z_t.to(weight.dtype), t.to(weight.dtype)).double()  # (B, L, E)
        if clamp or history is not None:
            clamped, ids = clamp_to_embeddings(x0_hat[:, Lp:], weight, exclude)  # (B, Lg, E), (B, Lg)
            if history is not None:
                history.append(torch.cat([prompt, ids], dim=1))
            if clamp:
                x0_hat = torch.cat([x0_hat[:, :Lp], clamped], dim=1)
        return torch.cat([e_prompt, x0_hat[:, Lp:]], dim=1)

    times = time_grid(steps, t_min=t_min)  # (steps + 1,) float64, 1 -> t_min
    z, nfe = sample(denoiser, z, times, schedule=schedule, target="x0", generator=generator)
    # 4. round the last latent: the nearest word embedding of z_{t_min} / alpha_{t_min}
    tokens = nearest_tokens(z[:, Lp:] / schedule.alpha(times[-1]).item(), weight, exclude)  # (B, Lg)
    return torch.cat([prompt, tokens], dim=1), nfe
