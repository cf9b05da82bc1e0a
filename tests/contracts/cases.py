"""The contract suite's case table: for each registered sampler, a small model that fits it and the model facts
to pass. A sampler without an entry here gets ``DEFAULT`` (a bidirectional Transformer, no facts); the suite
checks that every name in ``CASES`` is registered, so a stale entry fails."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from dlm.config import ModelConfig
from dlm.models.transformer import Transformer

VOCAB, EOS, PAD, MASK = 32, 29, 30, 31


def transformer(seed: int = 0, *, head_scale: float = 20.0, **config) -> Transformer:
    """A random 2-layer Transformer over ``VOCAB`` ids whose head is scaled up from the 0.02 init, so that its draws
    depend on the context (as ``tests.helpers.sharp_transformer``); ``config``: ``ModelConfig`` fields."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, **config)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
        if cfg.time_conditioning:  # adaLN starts as the identity: give t a real effect on the logits
            for module in [*(b.ada for b in model.layers()), model.final_ada]:
                module.weight.normal_(std=0.2)
    return model


def bidirectional(seed: int = 0) -> Transformer:
    return transformer(seed)


def causal(seed: int = 0) -> Transformer:
    return transformer(seed, causal=True)


def time_conditioned(seed: int = 0) -> Transformer:
    return transformer(seed, time_conditioning=True)


def ratios(seed: int = 0) -> Transformer:
    """SEDD's absorbing graph reads the logits as log-ratios: a sharp head would say "certainly unmasked" and reveal
    every position at the first step, so the head is scaled less."""
    return transformer(seed, head_scale=5.0)


def embedding(seed: int = 0) -> Transformer:
    """Diffusion-LM's shape: an 8-dimensional embedding space around the blocks (of unit scale). The output
    projection is scaled up from the 0.02 init so that the predicted x0 has the embeddings' scale (else it is near
    0 and always clamps to the embedding of smallest norm, whatever the latent)."""
    model = transformer(seed, head_scale=1.0, embed_dim=8)
    with torch.no_grad():
        model.out_proj.weight.mul_(20.0)
    return model


@dataclass(frozen=True)
class ToyCase:
    """An exact model of an enumerable toy (``tests/toy.py``) for a sampler, and how to run the sampler on it so that
    its draws follow the toy's distribution up to a discretisation error far below the test's resolution."""

    label: str
    make: Callable[[], tuple]  # () -> (toy, model, facts, options)


@dataclass(frozen=True)
class Case:
    build: Callable[[int], object] = bidirectional  # seed -> a float32 model of the model contract
    facts: dict = field(default_factory=dict)  # model facts (the run config's settings), for make_config
    options: dict = field(default_factory=dict)  # user options every contract run starts from
    # the state's canvas holds masks until a position is committed, and every generated position is committed by the
    # end (False: uniform-state and Gaussian samplers, whose tokens may all change until the last step)
    masked: bool = True
    # a generated token can be committed before the last step, so EOS stopping can end a run early
    commits_early: bool = True
    # pairs of option sets that must give the same tokens (an exact cache and no cache)
    exact_caches: tuple[tuple[dict, dict], ...] = ()
    toys: tuple[ToyCase, ...] = ()  # exact models of the toy (the "draws the toy distribution" test)
    # what to add to log-probabilities to make them this sampler's model outputs, for the tests that steer a model
    # towards EOS: SEDD reads log-ratios, log p + log(V - 1) on the absorbing graph (the same scale makes the
    # uniform graph's ratios about p(y) / p(x) for a model that is unsure of x)
    log_prob_offset: float = 0.0


# --- exact toy models -------------------------------------------------------------------------------------------
# The samplers below (but AR) are exact only in the limit of many steps: tokens revealed at the same step are drawn
# independently, the last step takes what is left, SEDD / UDLM's tau-leaping is first order in the step. 64 steps
# for 4 tokens put that error below what the test resolves with its 2000 draws (at 32 steps SEDD's absorbing
# samplers already sit at the test's critical value: the test does see a discretisation that is too coarse).


def _toy(V=2, L=4, seed=3):
    from toy import ToyDistribution

    return ToyDistribution(V=V, L=L, seed=seed)


def _ar_toy():
    from helpers import ar_oracle

    toy = _toy()
    return toy, ar_oracle(toy), {}, {"cache": "none"}


def _ancestral_toy():
    toy = _toy()
    return toy, lambda x, t=None, **_: toy.denoiser(x), {}, {"steps": 64}


def _block_toy():
    from helpers import block_oracle

    toy = _toy()
    return toy, block_oracle(toy, 2), {"block_size": 2}, {"steps": 64, "cache": "none"}


def _esolm_toy():
    from helpers import esolm_oracle

    toy = _toy()
    return toy, esolm_oracle(toy), {"alpha0": 0.5, "variant": "B"}, {"steps": 64, "cache": "none"}


def _sedd_absorb_toy():
    from helpers import absorb_ratios

    toy = _toy()
    return toy, absorb_ratios(toy), {"graph": "absorb"}, {"steps": 64}


def _sedd_uniform_toy():
    from helpers import uniform_ratios

    toy = _toy()
    facts = {"graph": "uniform", "time_conditioned": True, "vocab_size": toy.V}
    return toy, uniform_ratios(toy, toy.V), facts, {"steps": 64}


def _udlm_toy():
    from helpers import uniform_x0_denoiser

    toy = _toy()
    return toy, uniform_x0_denoiser(toy, toy.vocab), {"vocab_size": toy.vocab}, {"steps": 64}


SEDD_TOYS = (ToyCase("absorb", _sedd_absorb_toy), ToyCase("uniform", _sedd_uniform_toy))
KV_EXACT = (({"cache": "kv"}, {"cache": "none"}),)
UNIFORM_STATE = dict(masked=False, commits_early=False)

CASES: dict[str, Case] = {
    "ar": Case(causal, exact_caches=KV_EXACT, toys=(ToyCase("exact", _ar_toy),)),
    "ancestral": Case(toys=(ToyCase("exact", _ancestral_toy),)),
    # greedy by default (temperature 0): draws that depend on the seed need a temperature
    "confidence": Case(
        options={"temperature": 1.0, "block_length": 4},
        # Fast-dLLM's caches are approximations; refreshed at every step they are exact
        exact_caches=(
            ({"cache": "prefix", "refresh_every": 1}, {"cache": "none"}),
            ({"cache": "dual", "refresh_every": 1}, {"cache": "none"}),
        ),
    ),
    "block": Case(facts={"block_size": 4}, exact_caches=KV_EXACT, toys=(ToyCase("exact", _block_toy),)),
    "esolm": Case(facts={"alpha0": 0.5, "variant": "B"}, exact_caches=KV_EXACT, toys=(ToyCase("exact", _esolm_toy),)),
    "sedd-analytic": Case(ratios, facts={"graph": "absorb"}, toys=SEDD_TOYS, log_prob_offset=math.log(VOCAB - 1)),
    # the uniform graph on a time-conditioned model (SEDD's uniform models are)
    "sedd-euler": Case(
        time_conditioned,
        facts={"graph": "uniform", "time_conditioned": True, "vocab_size": VOCAB},
        toys=SEDD_TOYS,
        log_prob_offset=math.log(VOCAB - 1),
        **UNIFORM_STATE,
    ),
    "udlm": Case(time_conditioned, facts={"vocab_size": VOCAB}, toys=(ToyCase("exact", _udlm_toy),), **UNIFORM_STATE),
    "embed-ddpm": Case(embedding, **UNIFORM_STATE),
    "embed-ddim": Case(embedding, **UNIFORM_STATE),
    "embed-dpmpp-2m": Case(embedding, **UNIFORM_STATE),
}

DEFAULT = Case()


def case(name: str) -> Case:
    return CASES.get(name, DEFAULT)


def with_options(case: Case, **options) -> dict:
    return {**case.options, **options}


__all__ = ["CASES", "DEFAULT", "Case", "ToyCase", "case", "with_options", "VOCAB", "EOS", "PAD", "MASK"]
