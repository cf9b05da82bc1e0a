"""MDLM's ancestral sampler: the exact reverse process of masked diffusion on a time grid.

Grid 1 = t_0 > t_1 > ... > t_T = 0. Step t -> s: each masked position stays masked with probability
(1 - alpha(s)) / (1 - alpha(t)); otherwise it takes a token drawn from p_theta(x0 | xt) (SUBS: never the mask).
Clean tokens never change. If no token changed and the model is not time-conditioned, the previous
distribution is reused without calling the model (MDLM's cache). The last step fills what is left with the argmax.
"""

from __future__ import annotations

import torch

from dlm.noise.schedules import Schedule, get_schedule
from dlm.objectives.masked import subs_log_probs
from dlm.samplers.batching import end_at_eos, padding_inputs
from dlm.samplers.categorical import Generators, sample_categorical, uniform


@torch.no_grad()
def ancestral_generate(
    model,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    gen_length: int,
    steps: int,
    schedule: str | Schedule = "loglinear",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    time_conditioned: bool = False,
    prompt_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    generator: Generators = None,
    history: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """prompt [B, Lp] -> (tokens [B, Lp + gen_length], number of model calls). Masks in the prompt are infilled.

    ``prompt_mask`` [B, Lp] marks the real tokens of left-padded prompts; ``generator`` is one for the batch or
    one per row; with ``eos_id`` everything after a row's first generated ``<|endoftext|>`` is returned as one.
    """
    schedule = get_schedule(schedule)
    B, prompt_len = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)], 1)
    keys, positions = padding_inputs(prompt_mask, x.shape[1])
    kw = {} if keys is None else {"attn_mask": keys[:, None, :], "positions": positions}
    pads = None if prompt_mask is None else (~prompt_mask).sum(1)  # a row draws only for its own columns
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=x.device)
    log_p, nfe = None, 0
    for i in range(steps):
        t, s = times[i], times[i + 1]
        masked = x == mask_id  # (B, L)
        if not masked.any():
            break
        if log_p is None:
            log_p = subs_log_probs(model(x, t.float().expand(B), **kw), mask_id)  # (B, L, V)
            nfe += 1
        if i == steps - 1:  # last step: fill every remaining mask with the most likely token
            x_new = torch.where(masked, log_p.argmax(-1), x)
        else:
            alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(s)
            p_reveal = (alpha_s - alpha_t) / (1.0 - alpha_t)
            reveal = masked & (uniform(x.shape, generator=generator, device=x.device, starts=pads) < p_reveal)
            x_new = x.clone()  # tokens are drawn only where one is revealed, row by row with per-row generators
            draw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
            if generator is None or isinstance(generator, torch.Generator):
                x_new[reveal] = sample_categorical(log_p[reveal], generator=generator, **draw)
            else:
                for j, g in enumerate(generator):
                    x_new[j, reveal[j]] = sample_categorical(log_p[j, reveal[j]], generator=g, **draw)
        if time_conditioned or not torch.equal(x_new, x):
            log_p = None  # the input changed (or t matters): call the model again next step
        x = x_new
        if history is not None:
            history.append(x.clone())
    if eos_id is not None:
        end_at_eos(x, prompt_len, eos_id)
    return x, nfe
