"""What every objective returns, and the registry entry that describes an objective to the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, nats per token, what the optimiser minimises
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Objective:
    """An objective as the trainer, evaluator and CLI see it.

    ``loss(model, x0, *, eos_id, mask_id, schedule, generator, antithetic) -> LossOutput`` trains;
    ``sequence_nll(model, x0, *, eos_id, mask_id, schedule, num_samples, generator) -> Tensor[B]`` evaluates
    (nats per sequence: exact for AR, an upper bound for diffusion). Both also take ``kwargs_from(run_config)``,
    the objective's own settings (sedd: ``graph``, ``vocab_size``; bd3lm: ``block_size``, ``clip``; esolm:
    ``alpha0``, ``variant``), and ``**_``.
    """

    name: str
    loss: Callable[..., LossOutput]
    sequence_nll: Callable[..., torch.Tensor]
    causal: bool  # attention the backbone is built with
    is_bound: bool  # does sequence_nll return an upper bound rather than the exact NLL?
    samplers: tuple[str, ...]  # samplers that apply; the first is the default
    default_schedule: str = "loglinear"  # train.schedule when --schedule is not given
    configure: Callable[..., None] | None = None  # fits a RunConfig to the objective before the model is built
    options: Callable[..., dict] | None = None  # RunConfig -> extra keyword arguments of loss and sequence_nll

    def kwargs_from(self, cfg) -> dict:
        """The extra keyword arguments that ``cfg`` (a RunConfig) gives ``loss`` and ``sequence_nll``."""
        return {} if self.options is None else self.options(cfg)
