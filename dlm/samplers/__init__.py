"""Samplers (reverse loops), one file each, all with one interface (``dlm.samplers.base``); ``SAMPLERS`` lists them.

Adding a sampler is one file with its frozen config dataclass and ``generate(model, batch, config, generators,
on_step=None) -> SampleOutput``, plus one ``SAMPLERS.register`` line here; the contract suites in
``tests/contracts/`` then cover it (docs/CONTRIBUTING.md walks through an example).
"""

from __future__ import annotations

from dlm.noise.categorical import gumbel_noise, sample_categorical
from dlm.registry import Registry
from dlm.samplers.ancestral import AncestralConfig, ancestral_generate
from dlm.samplers.ar import ArConfig, ar_generate
from dlm.samplers.base import (
    MODEL,
    ReuseLogits,
    SampleBatch,
    SampleOutput,
    Sampler,
    SamplerConfig,
    SampleState,
    end_at_eos,
    ended_rows,
    model_fields,
    run_sampler,
    user_fields,
)
from dlm.samplers.block import BlockConfig, block_generate, num_blocks_to_generate
from dlm.samplers.confidence import (
    CACHES,
    REMASKING,
    ConfidenceConfig,
    confidence_generate,
    confidence_sample,
    num_transfer_tokens,
)
from dlm.samplers.embedding import EmbeddingConfig, clamp_to_embeddings, embedding_sampler, nearest_tokens
from dlm.samplers.esolm import EsolmConfig, esolm_generate
from dlm.samplers.ode import ODE_SAMPLERS, guided, time_grid
from dlm.samplers.score_entropy import SeddConfig, UdlmConfig, sedd_analytic, sedd_euler, udlm_generate

SAMPLERS: Registry[Sampler] = Registry("sampler")
# infills=True: keeps any fixed positions and reads both sides of a hole (ar sees the left only; esolm's order and
# caches, and the embedding samplers' prompt, assume a prefix; block sees the right side within the hole's block)
SAMPLERS.register("ar", Sampler("ar", ar_generate, ArConfig))
SAMPLERS.register("ancestral", Sampler("ancestral", ancestral_generate, AncestralConfig, infills=True))
SAMPLERS.register("confidence", Sampler("confidence", confidence_sample, ConfidenceConfig, infills=True))
SAMPLERS.register("block", Sampler("block", block_generate, BlockConfig, pads=False, infills=True))
SAMPLERS.register("esolm", Sampler("esolm", esolm_generate, EsolmConfig, pads=False))
SAMPLERS.register("sedd-analytic", Sampler("sedd-analytic", sedd_analytic, SeddConfig, infills=True))
SAMPLERS.register("sedd-euler", Sampler("sedd-euler", sedd_euler, SeddConfig, infills=True))
SAMPLERS.register("udlm", Sampler("udlm", udlm_generate, UdlmConfig, infills=True))
for _ode in ("ddpm", "ddim", "dpmpp-2m"):
    SAMPLERS.register(
        f"embed-{_ode}",
        Sampler(f"embed-{_ode}", embedding_sampler(_ode), EmbeddingConfig, pads=False, per_row_generators=False),
    )


def infill_samplers() -> list[str]:
    """The samplers that can infill (registered with ``infills=True``)."""
    return [name for name in SAMPLERS if SAMPLERS.get(name).infills]


def model_facts(run_config) -> dict:
    """What a trained model tells every sampler config (the fields marked ``MODEL``): its schedule, time
    conditioning, vocabulary, logits shift and objective settings (SEDD graph, BD3-LM block size, Eso-LM alpha0
    and variant)."""
    cfg = run_config
    options = cfg.objective_config()  # the objective's Config: graph, block_size, alpha0, variant, ...
    option = lambda name, default: getattr(options, name, default)  # noqa: E731

    return dict(
        schedule=cfg.train.schedule,
        time_conditioned=cfg.model.time_conditioning,
        vocab_size=cfg.model.vocab_size,
        logits_shift=cfg.model.logits_shift,
        graph=option("graph", "absorb"),
        block_size=option("block_size", None),
        alpha0=option("alpha0", None),
        variant=option("variant", None),
    )


def sampler_options() -> dict[str, list[str]]:
    """Every user option of every sampler: option name -> the samplers that take it (what the CLI's flags map to)."""
    out: dict[str, list[str]] = {}
    for name in SAMPLERS:
        for option in user_fields(SAMPLERS.get(name).config):
            out.setdefault(option, []).append(name)
    return out


__all__ = [
    "SAMPLERS",
    "MODEL",
    "Sampler",
    "SamplerConfig",
    "SampleBatch",
    "SampleState",
    "SampleOutput",
    "ReuseLogits",
    "run_sampler",
    "model_facts",
    "infill_samplers",
    "sampler_options",
    "user_fields",
    "model_fields",
    "ended_rows",
    "end_at_eos",
    "CACHES",
    "REMASKING",
    "AncestralConfig",
    "ArConfig",
    "BlockConfig",
    "ConfidenceConfig",
    "EmbeddingConfig",
    "EsolmConfig",
    "SeddConfig",
    "UdlmConfig",
    "ar_generate",
    "ancestral_generate",
    "confidence_generate",
    "confidence_sample",
    "block_generate",
    "esolm_generate",
    "sedd_analytic",
    "sedd_euler",
    "udlm_generate",
    "embedding_sampler",
    "num_transfer_tokens",
    "num_blocks_to_generate",
    "gumbel_noise",
    "sample_categorical",
    "ODE_SAMPLERS",
    "guided",
    "time_grid",
    "clamp_to_embeddings",
    "nearest_tokens",
]
