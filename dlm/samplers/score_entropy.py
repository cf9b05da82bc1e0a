"""SEDD's samplers and UDLM's: tau-leaping steps of a ratio model, ending with a denoising step.

Grid 1 = t_0 > t_1 > ... > t_T = 0, T = ``steps``. Each step reads the model's ratios s at (xt, t) and draws every
position independently from the reverse step's probabilities of the graph (``dlm.noise.graphs.step_probs``:
Euler or the analytic Tweedie step; the last step is the denoising step), in float64 by Gumbel-max
(``dlm.noise.categorical``); with one generator per row a row's sample does not depend on its batch.

- ``sedd-analytic`` / ``sedd-euler`` (``--objective sedd``): ratios by SEDD's output scaling
  (``dlm.noise.graphs.log_ratios``) on the model's graph. Absorb: the canvas starts masked and only masks change
  (masks in the prompt are infilled); uniform: the generated region starts as uniformly random ids and every
  position of it may change at every step.
- ``udlm`` (``--objective udlm``): the x0-predicting model read through UDLM's mean parameterisation
  (``dlm.noise.uniform.mean_log_ratios``) on the uniform graph; its analytic step is UDLM's ancestral step.

If nothing changed and the model is not time-conditioned, the previous logits are reused. Infilling: only the
positions that are not fixed (``SampleBatch.fixed``) start as noise and change; the fixed text on both sides is
read clean at every step (as a prompt is: the model saw it noised in training, so on the uniform graph this is
the usual clamping approximation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dlm.errors import DlmError
from dlm.noise.categorical import sample_categorical, uniform
from dlm.noise.graphs import GRAPH_NAMES, log_ratios, sigma_bar, step_probs
from dlm.noise.schedules import get_schedule
from dlm.noise.uniform import mean_log_ratios
from dlm.samplers.base import MODEL, ReuseLogits, SampleBatch, SampleOutput, SamplerConfig, SampleState, report


@dataclass(frozen=True)
class SeddConfig(SamplerConfig):
    steps: int | None = None  # denoising steps (default: one per generated token)
    graph: str = field(default="absorb", metadata=MODEL)
    schedule: str = field(default="loglinear", metadata=MODEL)
    time_conditioned: bool = field(default=False, metadata=MODEL)
    vocab_size: int | None = field(default=None, metadata=MODEL)  # the uniform graph's ids

    def __post_init__(self):
        super().__post_init__()
        if self.graph not in GRAPH_NAMES:
            raise DlmError(f"unknown graph {self.graph!r}; choose one of: {', '.join(GRAPH_NAMES)}")
        if self.graph == "uniform" and self.vocab_size is None:
            raise DlmError("the uniform graph needs vocab_size to draw its starting canvas")


@dataclass(frozen=True)
class UdlmConfig(SamplerConfig):
    steps: int | None = None  # denoising steps (default: one per generated token)
    schedule: str = field(default="loglinear", metadata=MODEL)
    vocab_size: int | None = field(default=None, metadata=MODEL)

    def __post_init__(self):
        super().__post_init__()
        if self.vocab_size is None:
            raise DlmError("the udlm sampler needs vocab_size to draw its starting canvas")


@torch.no_grad()
def _ratio_loop(
    model,
    batch: SampleBatch,
    *,
    graph: str,
    method: str,
    steps: int | None,
    schedule,
    time_conditioned: bool,
    vocab_size: int | None,
    ratios,
    generators,
    on_step,
) -> SampleOutput:
    schedule = get_schedule(schedule)
    steps = steps or batch.open_length
    mask_id, prompt_len = batch.mask_id, batch.prompt_len
    x = batch.tokens.clone()
    B = x.shape[0]
    pads = batch.pads()  # a row draws only for its own columns
    # 1. the canvas at t = 1: masks (absorb) or uniformly random ids in the generated region (uniform)
    movable = ~batch.fixed
    if graph == "uniform":
        u = uniform((B, batch.gen_length), generator=generators, device=x.device)
        noise = (u * vocab_size).long().clamp_max(vocab_size - 1)  # (B, G)
        x[:, prompt_len:] = torch.where(movable[:, prompt_len:], noise, x[:, prompt_len:])
    keys, positions = batch.attention()
    kw = {} if keys is None else {"attn_mask": keys[:, None, :], "positions": positions}
    call = ReuseLogits(lambda x, t: model(x, t.float().expand(B), **kw), reusable=not time_conditioned)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=x.device)
    for i in range(steps):
        t, s = times[i], times[i + 1]
        final = i == steps - 1
        if graph == "absorb" and not (x == mask_id).any():
            break  # nothing left to unmask
        # 2. ratios at (x, t)
        log_s = ratios(call(x, t), x, t.expand(B))  # (B, L, V) float64
        # 3. one reverse step per position, drawn in float64
        delta = (sigma_bar(schedule, t) - sigma_bar(schedule, s)).item()
        probs = step_probs(graph, log_s, x, delta, method, final, mask_id)  # (B, L, V)
        draw = sample_categorical(probs.log(), generator=generators, starts=pads)  # (B, L)
        change = (x == mask_id) if graph == "absorb" else movable
        x = torch.where(change, draw, x)

        def state():
            committed = (x != mask_id) if graph == "absorb" else (batch.fixed | final)
            return SampleState(
                x, committed.expand_as(x), i + 1, call.nfe, masked=(x == mask_id) if graph == "absorb" else None
            )

        if not report(on_step, state):
            break
    return SampleOutput(x, call.nfe)


def _sedd(method: str):
    def generate(model, batch: SampleBatch, config: SeddConfig, generators=None, on_step=None) -> SampleOutput:
        schedule = get_schedule(config.schedule)
        ratios = lambda logits, x, t: log_ratios(logits.double(), x, t, graph=config.graph, schedule=schedule)  # noqa: E731
        return _ratio_loop(
            model,
            batch,
            graph=config.graph,
            method=method,
            steps=config.steps,
            schedule=schedule,
            time_conditioned=config.time_conditioned,
            vocab_size=config.vocab_size,
            ratios=ratios,
            generators=generators,
            on_step=on_step,
        )

    generate.__name__ = f"sedd_{method}"
    generate.__doc__ = f"SEDD with {method} steps (and the analytic denoising step at the end)."
    return generate


sedd_analytic = _sedd("analytic")
sedd_euler = _sedd("euler")


def udlm_generate(model, batch: SampleBatch, config: UdlmConfig, generators=None, on_step=None) -> SampleOutput:
    """UDLM's ancestral sampler: SEDD's analytic step on the ratios of the predicted x0, from uniformly random ids;
    every generated token may change at every step. The model is time-conditioned."""
    schedule = get_schedule(config.schedule)

    def ratios(logits, x, t):  # mean parameterisation, then SEDD's uniform graph (no shift)
        log_s = mean_log_ratios(logits, x, t, schedule=schedule, mask_id=batch.mask_id).double()
        return log_ratios(log_s, x, t, graph="uniform", schedule=schedule)

    return _ratio_loop(
        model,
        batch,
        graph="uniform",
        method="analytic",
        steps=config.steps,
        schedule=schedule,
        time_conditioned=True,
        vocab_size=config.vocab_size,
        ratios=ratios,
        generators=generators,
        on_step=on_step,
    )
