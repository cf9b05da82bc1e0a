"""SEDD's samplers: Euler and the analytic (Tweedie tau-leaping) step on the learned ratios, then a denoising step.

Grid 1 = t_0 > t_1 > ... > t_T = 0, step t -> s, delta = sigma_bar(t) - sigma_bar(s). Each position moves
independently given xt (tau-leaping); s_y are the model's ratios at xt (``log_ratios``, s = 1 at y = xt^l),
K = exp(delta Q) the forward kernel over the step (K(y, x): from y at time s to x at time t) and N the ids:

- Euler:    p(y) = delta Q(y, x) s_y for y != x = xt^l (delta: sigma(t) dt integrated over the step), and
            p(x) = 1 - sum_{y != x} p(y).
- analytic: p(y) proportional to [s^T exp(-delta Q)]_y K(y, x), the exact one-position reverse kernel
            p_s(y) / p_t(x) * p(x | y) written with the ratios (SEDD's Tweedie tau-leaping).
  absorb, x = m:  p(y) = (e^delta - 1) s_y, p(m) = 1 - (e^delta - 1) sum_{y != m} s_y; with the exact ratios this is
                  MDLM's reveal probability (alpha_s - alpha_t) / (1 - alpha_t) times p(x0 = y | xt).
  uniform:        p(y) ∝ [e^delta s_y + (1 - e^delta) S / N] [e^-delta [y = x] + (1 - e^-delta) / N], S = sum_z s_z.
Negative values (possible with a model's ratios) are clipped to 0 before normalising. The last step (to t = 0) is
the denoising step of both samplers: the analytic step with delta = sigma_bar(t), and (absorb) no mass on the mask.
Draws are float64 inverse-CDF draws (``dlm.samplers.categorical``); with one generator per row a row's sample does
not depend on its batch. If nothing changed and the model is not time-conditioned, the previous logits are reused.
"""

from __future__ import annotations

import math

import torch

from dlm.noise.schedules import Schedule, get_schedule
from dlm.objectives.score_entropy import GRAPHS, log_ratios, sigma_bar
from dlm.samplers.batching import end_at_eos, padding_inputs
from dlm.samplers.categorical import Generators, sample_categorical, uniform

METHODS = ("euler", "analytic")


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


_PROBS = {"absorb": _absorb_probs, "uniform": _uniform_probs}


@torch.no_grad()
def sedd_generate(
    model,
    prompt: torch.Tensor,
    *,
    graph: str = "absorb",
    method: str = "analytic",
    mask_id: int,
    vocab_size: int | None = None,
    gen_length: int,
    steps: int,
    schedule: str | Schedule = "loglinear",
    time_conditioned: bool = False,
    prompt_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    generator: Generators = None,
    history: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """prompt [B, Lp] -> (tokens [B, Lp + gen_length], number of model calls). The prompt stays fixed (absorb:
    masks in it are infilled). ``prompt_mask`` [B, Lp] marks the real tokens of left-padded prompts;
    ``generator`` is one for the batch or one per row; with ``eos_id`` everything after a row's first generated
    ``<|endoftext|>`` is returned as one. ``vocab_size``: the ids of the uniform graph's starting canvas."""
    GRAPHS.get(graph)
    if graph == "uniform" and vocab_size is None:
        raise ValueError("the uniform graph needs vocab_size to draw its starting canvas")
    if method not in METHODS:
        raise ValueError(f"unknown SEDD step {method!r}; choose one of: {', '.join(METHODS)}")
    schedule = get_schedule(schedule)
    B, prompt_len = prompt.shape
    pads = None if prompt_mask is None else (~prompt_mask).sum(1)  # a row draws only for its own columns
    # 1. the canvas at t = 1: masks (absorb) or uniformly random ids (uniform)
    if graph == "absorb":
        noise = torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)
    else:
        u = uniform((B, gen_length), generator=generator, device=prompt.device)
        noise = (u * vocab_size).long().clamp_max(vocab_size - 1)
    x = torch.cat([prompt, noise], 1)  # (B, L)
    movable = torch.zeros_like(x, dtype=torch.bool)
    movable[:, prompt_len:] = True  # uniform: only the generated region moves
    keys, positions = padding_inputs(prompt_mask, x.shape[1])
    kw = {} if keys is None else {"attn_mask": keys[:, None, :], "positions": positions}
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=x.device)
    logits, nfe = None, 0
    for i in range(steps):
        t, s = times[i], times[i + 1]
        final = i == steps - 1
        if graph == "absorb" and not (x == mask_id).any():
            break  # nothing left to unmask
        # 2. ratios at (x, t)
        if logits is None:
            logits = model(x, t.float().expand(B), **kw)  # (B, L, V)
            nfe += 1
        log_s = log_ratios(logits.double(), x, t.expand(B), graph=graph, schedule=schedule)  # (B, L, V)
        # 3. one reverse step per position, drawn in float64
        delta = (sigma_bar(schedule, t) - sigma_bar(schedule, s)).item()
        probs = _PROBS[graph](log_s, x, delta, "analytic" if final else method, final, mask_id)  # (B, L, V)
        draw = sample_categorical(probs.log(), generator=generator, starts=pads)  # (B, L)
        change = (x == mask_id) if graph == "absorb" else movable
        x_new = torch.where(change, draw, x)
        if time_conditioned or not torch.equal(x_new, x):
            logits = None  # the input changed (or t matters): call the model again next step
        x = x_new
        if history is not None:
            history.append(x.clone())
    if eos_id is not None:
        end_at_eos(x, prompt_len, eos_id)
    return x, nfe


def sedd_euler(model, prompt, **kw) -> tuple[torch.Tensor, int]:
    """``sedd_generate`` with Euler steps (and the analytic denoising step at the end)."""
    return sedd_generate(model, prompt, method="euler", **kw)


def sedd_analytic(model, prompt, **kw) -> tuple[torch.Tensor, int]:
    """``sedd_generate`` with the analytic (Tweedie tau-leaping) step."""
    return sedd_generate(model, prompt, method="analytic", **kw)
