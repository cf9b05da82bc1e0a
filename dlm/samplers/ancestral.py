"""MDLM's ancestral sampler: the exact reverse process of masked diffusion on a time grid.

Grid 1 = t_0 > t_1 > ... > t_T = 0, T = ``steps``. Step t -> s is ``MaskedProcess.step``: each masked position
is revealed w.p. (alpha(s) - alpha(t)) / (1 - alpha(t)) and takes a token drawn from p_theta(x0 | xt) (SUBS: never
the mask); clean tokens never change. If no token changed and the model is not time-conditioned, the previous
distribution is reused without calling the model (MDLM's cache). The last step fills what is left with the argmax.
Masks in the prompt are infilled like the generated region, and only masks change: infilling (holes between fixed
text, ``SampleBatch.from_canvases``) is the same reverse process restricted to the holes, with both sides visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm.noise.masked import MaskedProcess
from dlm.samplers.base import MODEL, ReuseLogits, SampleBatch, SampleOutput, SamplerConfig, SampleState, report


@dataclass(frozen=True)
class AncestralConfig(SamplerConfig):
    steps: int | None = None  # denoising steps (default: one per generated token, or per hole token)
    temperature: float = 1.0  # 1 draws from the model as it is
    top_k: int = 0
    top_p: float = 1.0
    schedule: str = field(default="loglinear", metadata=MODEL)
    time_conditioned: bool = field(default=False, metadata=MODEL)


@torch.no_grad()
def ancestral_generate(
    model, batch: SampleBatch, config: AncestralConfig, generators=None, on_step=None
) -> SampleOutput:
    """``model(x [B, L], t [B], attn_mask=, positions=) -> logits [B, L, V]`` -> the denoised canvas."""
    process = MaskedProcess(config.schedule, batch.mask_id)
    steps = config.steps or batch.open_length
    x = batch.tokens.clone()
    B = x.shape[0]
    keys, positions = batch.attention()
    kw = {} if keys is None else {"attn_mask": keys[:, None, :], "positions": positions}
    pads = batch.pads()  # a row draws only for its own columns
    log_probs = ReuseLogits(
        lambda x, t: process.log_probs(model(x, t.float().expand(B), **kw)), reusable=not config.time_conditioned
    )
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=x.device)
    for i in range(steps):
        t, s = times[i], times[i + 1]
        masked = x == batch.mask_id  # (B, L)
        if not masked.any():
            break
        log_p = log_probs(x, t)  # (B, L, V)
        if i == steps - 1:  # last step: fill every remaining mask with the most likely token
            x = torch.where(masked, log_p.argmax(-1), x)
        else:
            x = process.step(
                x,
                log_p,
                s,
                t,
                generators,
                temperature=config.temperature,
                top_k=config.top_k,
                top_p=config.top_p,
                starts=pads,
            )
        state = lambda: SampleState(x, x != batch.mask_id, i + 1, log_probs.nfe, masked=x == batch.mask_id)  # noqa: E731
        if not report(on_step, state):
            break
    return SampleOutput(x, log_probs.nfe)
