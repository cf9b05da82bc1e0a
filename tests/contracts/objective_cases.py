"""The objective contract suite's case table: for each registered objective, the options a run config gives it,
one out-of-range value per field of its ``Config``, and its exact models of the enumerable toy (``tests/toy.py``).
An objective without an entry gets ``ObjectiveCase()`` (no options, no toy): the suite then fails until it is given
an exact model or is listed in ``EXEMPT``, and checks that every name here is registered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class ObjectiveToy:
    """An exact model of the toy for an objective, and a wrong one. ``make() -> (toy, exact, wrong, kwargs)``;
    ``kwargs``: the objective's constructor arguments (config, vocab_size, schedule) on the toy's ids. ``draws``:
    one-draw estimates per sequence (the tightness test's resolution); ``margin``: nats by which the wrong model's
    bound, averaged over the data, must exceed the entropy."""

    label: str
    make: Callable[[], tuple]
    draws: int = 4000
    margin: float = 0.1


@dataclass(frozen=True)
class ObjectiveCase:
    # the run config's objective sections for the contract runs on a Transformer (8-token sequences): the defaults
    # (as far as they fit) and non-default options
    options: tuple[dict, ...] = ({},)
    bad: dict = field(default_factory=dict)  # field -> (an out-of-range value, a fragment of its one-line error)
    toys: tuple[ObjectiveToy, ...] = ()


# the toy of the bounds: V = 2 real tokens, L = 4 (16 sequences); ids 0, 1, mask 2, eos 3 (but UNIFORM_TOY)
def _toy(V=2, L=4, seed=5):
    from toy import ToyDistribution

    return ToyDistribution(V=V, L=L, seed=seed)


# The uniform-state bounds' one-draw estimates are heavy-tailed (single draws of 10^3 nats near t_min): on the V = 2
# toy the sample standard error understates their spread and a max |z| of 4 to 5 over the 16 sequences is common
# even at 12000 draws. They are checked on the V = 3, L = 3 toy (27 sequences), whose tails are lighter.
UNIFORM_TOY = dict(V=3, L=3, seed=1)


def zeros(width):
    """The uniform model: zero logits (ratios 1) of ``width`` at every position, whatever the call."""
    return lambda x, *_, **__: torch.zeros(*x.shape, width)


def tempered(model, factor=0.5):
    return lambda *args, **kwargs: factor * model(*args, **kwargs)


def _ar():
    from helpers import ar_oracle

    toy = _toy()
    return toy, ar_oracle(toy), zeros(toy.vocab), {"vocab_size": toy.vocab}


def _mdlm(schedule):
    def make():
        toy = _toy()
        return toy, toy.denoiser, zeros(toy.vocab), {"vocab_size": toy.vocab, "schedule": schedule}

    return ObjectiveToy(schedule, make)


def _sedd_absorb():
    from helpers import absorb_ratios

    from dlm.objectives import SEDD

    toy = _toy()
    return toy, absorb_ratios(toy), zeros(toy.vocab), {"config": SEDD.Config(graph="absorb"), "vocab_size": toy.vocab}


def _sedd_uniform():
    from helpers import uniform_ratios

    from dlm.objectives import SEDD

    toy = _toy(**UNIFORM_TOY)  # the uniform graph over the V real ids
    return toy, uniform_ratios(toy, toy.V), zeros(toy.V), {"config": SEDD.Config(graph="uniform"), "vocab_size": toy.V}


def _udlm():
    from helpers import uniform_x0_denoiser

    toy = _toy(**UNIFORM_TOY)  # uniform noise over all vocab ids
    return toy, uniform_x0_denoiser(toy, toy.vocab), zeros(toy.vocab), {"vocab_size": toy.vocab}


def _bd3lm(block_size):
    def make():
        from helpers import bd3_oracle

        from dlm.objectives import BD3LM

        toy = _toy()
        exact = bd3_oracle(toy, block_size)
        return toy, exact, tempered(exact), {"config": BD3LM.Config(block_size=block_size), "vocab_size": toy.vocab}

    return ObjectiveToy(f"k{block_size}", make)


def _esolm(alpha0, variant):
    def make():
        from helpers import esolm_oracle

        from dlm.objectives import EsoLM

        toy = _toy()
        return (
            toy,
            esolm_oracle(toy),
            esolm_oracle(toy, wrong=0.5),
            {"config": EsoLM.Config(alpha0=alpha0, variant=variant), "vocab_size": toy.vocab},
        )

    return ObjectiveToy(f"alpha{alpha0}-{variant}", make, draws=2000, margin=0.05)


CASES: dict[str, ObjectiveCase] = {
    "ar": ObjectiveCase(toys=(ObjectiveToy("exact", _ar, draws=1),)),  # exact: one evaluation, no draws
    "mdlm": ObjectiveCase(toys=tuple(_mdlm(s) for s in ("linear", "loglinear", "cosine"))),
    "sedd": ObjectiveCase(
        options=({}, {"graph": "uniform"}),
        bad={"graph": ("ring", "unknown graph 'ring'")},
        toys=(ObjectiveToy("absorb", _sedd_absorb), ObjectiveToy("uniform", _sedd_uniform, 3000)),
    ),
    "udlm": ObjectiveCase(toys=(ObjectiveToy("exact", _udlm, draws=3000),)),
    "bd3lm": ObjectiveCase(
        options=({"block_size": 4}, {"block_size": 2, "clip_beta": 0.2, "clip_omega": 0.9}),
        bad={
            "block_size": (0, "--block-size 0 must be positive"),
            "clip_beta": (0.9, "the clipped schedule needs 0 <= objective.clip_beta"),
            "clip_omega": (1.5, "the clipped schedule needs"),
        },
        toys=tuple(_bd3lm(k) for k in (1, 2, 4)),
    ),
    "esolm": ObjectiveCase(
        options=({}, {"alpha0": 0.5, "variant": "A"}),
        bad={
            "alpha0": (1.5, "--alpha0 1.5 must be in [0, 1]"),
            "variant": ("C", "--variant C is not an Eso-LM variant"),
        },
        toys=tuple(_esolm(a, v) for a in (0.5, 1.0) for v in ("A", "B")),
    ),
}

# objectives with no exact model of the discrete toy, and why (the suite asserts this is exactly the set of
# registered objectives without toys)
EXEMPT = {
    "diffusion-lm": "Gaussian diffusion on learned embeddings: no exact model of a discrete toy over token ids; "
    "its tight bound is tests/test_diffusion_lm.py's four-corner ExactDenoiser",
}


def case(name: str) -> ObjectiveCase:
    return CASES.get(name, ObjectiveCase())
