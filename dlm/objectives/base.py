"""What every objective is and returns: ``Objective`` (a configured object), ``LossOutput``, the registry that
builds objectives from a run config, and the one Monte Carlo loop every NELBO runs.

An objective is built once from its small frozen ``Config`` and the run's keyword arguments, then called:

    objective = OBJECTIVES.build(run_config, tokenizer)        # or e.g. MDLM(mask_id=..., eos_id=..., ...)
    out = objective.loss(model, x0, generator)                 # LossOutput: scalar loss + detached metrics
    nll = objective.nll(model, x0, num_samples, generator)     # [B] nats per sequence (a bound unless AR)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from dlm.errors import DlmError
from dlm.registry import Registry


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, nats per token, what the optimiser minimises
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalar tensors (no .item() here)


class Objective:
    """Base class of the registered objectives. Subclasses set the class attributes, ``Config`` (a frozen
    dataclass of their options, validated in its ``__post_init__``), ``loss`` and ``nll``, and ``configure`` when
    they constrain the run."""

    name: ClassVar[str]
    causal: ClassVar[bool] = False  # attention the backbone is built with
    is_bound: ClassVar[bool] = True  # does nll return an upper bound rather than the exact NLL?
    samplers: ClassVar[tuple[str, ...]]  # samplers that apply; the first is the default
    default_schedule: ClassVar[str] = "loglinear"  # train.schedule when --schedule is not given
    shifts: ClassVar[bool] = False  # does it take a model with logits_shift (position 0 then holds BOS)?

    @dataclass(frozen=True)
    class Config:
        """No options."""

    def __init__(
        self,
        config=None,
        *,
        mask_id: int,
        eos_id: int,
        vocab_size: int,
        schedule: str | None = None,
        antithetic: bool = True,
        bos_id: int | None = None,
        logits_shift: bool = False,
    ):
        config = self.Config() if config is None else config
        if type(config) is not self.Config:
            raise DlmError(
                f"the {self.name} objective takes a {type(self).__name__}.Config, got {type(config).__qualname__}"
            )
        self.config = config
        self.mask_id, self.eos_id, self.vocab_size = mask_id, eos_id, vocab_size
        self.bos_id = eos_id if bos_id is None else bos_id  # the start token (AR's first input, a shifted model's)
        self.logits_shift = logits_shift  # the model scores position i at i - 1 (ModelConfig.logits_shift)
        if logits_shift and not self.shifts:
            raise DlmError(f"the {self.name} objective does not take a shifted model (model.logits_shift); mdlm does")
        self.schedule = self.default_schedule if schedule is None else schedule
        self.antithetic = antithetic

    @classmethod
    def configure(cls, run_config) -> None:
        """Check a ``RunConfig`` against the objective and fit its model config, before the model is built."""

    def loss(self, model, batch: torch.Tensor, generator: torch.Generator | None) -> LossOutput:
        """Training loss of a batch x0 [B, L] (LongTensor), nats per token."""
        raise NotImplementedError

    def nll(self, model, x0: torch.Tensor, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
        """-log p(x0) per sequence, [B] nats: exact for AR, an upper bound (``num_samples`` draws) otherwise."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, schedule={self.schedule!r})"


def config_fields(config_cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_cls)}


def monte_carlo(
    draw: Callable[[torch.Tensor], torch.Tensor],
    sample: Callable[[int], torch.Tensor],
    *,
    num_samples: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The mean of ``num_samples`` Monte Carlo draws per sequence, [B] in ``dtype``.

    ``sample(n)`` draws the times of all n = num_samples * B draws at once ([n] or [n, ...], antithetic across them;
    row s * B + b is the s-th draw of sequence b); ``draw(t)`` evaluates one draw of every sequence at times t
    ([B] or [B, ...]) and returns [B]. Draws run in order s = 0, 1, ..., so the random stream is that of a loop."""
    if num_samples < 1:
        raise DlmError(f"num_samples must be at least 1, got {num_samples}")
    t_all = sample(num_samples * batch_size)
    t_all = t_all.view(num_samples, batch_size, *t_all.shape[1:])  # [s]: the s-th draw of every sequence
    total = torch.zeros(batch_size, dtype=dtype, device=device)
    for s in range(num_samples):
        total = total + draw(t_all[s]).to(dtype)
    return total / num_samples


class ObjectiveRegistry(Registry[type]):
    """``OBJECTIVES``: name -> objective class; ``build`` makes the objective of a run."""

    def build(self, run_config, tokenizer) -> Objective:
        """The objective named ``run_config.train.objective`` with the options of ``run_config.objective``;
        special ids from ``tokenizer``, the vocabulary and the logits shift from ``run_config.model``."""
        cls = self.get(run_config.train.objective)
        if tokenizer.mask_id is None and cls.name != "ar":
            raise DlmError(f"the {cls.name} objective needs a mask token, and the tokenizer has none")
        return cls(
            run_config.objective_config(),
            mask_id=tokenizer.mask_id,
            eos_id=tokenizer.eos_id,
            vocab_size=run_config.model.vocab_size,
            schedule=run_config.train.schedule,
            antithetic=run_config.train.antithetic,
            bos_id=getattr(tokenizer, "bos_id", None),
            logits_shift=run_config.model.logits_shift,
        )
