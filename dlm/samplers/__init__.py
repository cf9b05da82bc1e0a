"""Samplers (reverse processes) as plain functions; ``SAMPLERS`` runs any of them from one ``SampleConfig``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DlmError
from dlm.objectives.udlm import MeanRatios
from dlm.registry import Registry
from dlm.samplers.ancestral import ancestral_generate
from dlm.samplers.ar import ar_generate
from dlm.samplers.batching import left_pad, row_by_row
from dlm.samplers.block import block_generate, num_blocks_to_generate
from dlm.samplers.categorical import gumbel_noise, sample_categorical
from dlm.samplers.confidence import CACHES, REMASKING, confidence_generate, num_transfer_tokens
from dlm.samplers.embedding import clamp_to_embeddings, diffusion_lm_generate, nearest_tokens
from dlm.samplers.esolm import esolm_generate
from dlm.samplers.ode import ODE_SAMPLERS, guided, time_grid
from dlm.samplers.score_entropy import sedd_analytic, sedd_euler, sedd_generate


@dataclass
class SampleConfig:
    gen_length: int = 64
    steps: int = 64  # denoising steps (diffusion samplers; ignored by ar)
    block_length: int | None = None  # confidence sampler blocks (None = one block); block sampler: its block size
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    remasking: str = "low_confidence"
    cfg_scale: float = 0.0
    threshold: float | None = None  # confidence sampler: Fast-dLLM threshold decoding instead of fixed counts
    cache: str = "none"  # confidence sampler: none, prefix or dual (Fast-dLLM)
    stop_at_eos: bool = False  # end a sample at its first <|endoftext|>
    schedule: str = "loglinear"


def model_options(run_config, tokenizer) -> dict:
    """The keyword arguments a trained model gives every ``SAMPLERS`` entry: its tokenizer's special ids and its
    run config's objective settings (time conditioning, SEDD graph, vocabulary, BD3-LM block size, Eso-LM alpha0
    and variant); each sampler takes those it needs."""
    cfg = run_config
    options = cfg.objective_config()  # the objective's options; the defaults below where it has none of them
    return dict(
        mask_id=tokenizer.mask_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
        time_conditioned=cfg.model.time_conditioning, graph=getattr(options, "graph", "absorb"),
        vocab_size=cfg.model.vocab_size, block_size=getattr(options, "block_size", 16),
        alpha0=getattr(options, "alpha0", 1.0), variant=getattr(options, "variant", "B"),
    )


# Each entry: (model, prompt, cfg, *, mask_id, eos_id, pad_id, time_conditioned, prompt_mask, generator, history,
# graph, vocab_size, block_size, alpha0, variant) -> tokens; block_size is the model's training block size
# (bd3lm), alpha0 and variant its Eso-LM settings (esolm); other models ignore them
SAMPLERS: Registry = Registry("sampler")


@SAMPLERS.register("ar")
def _run_ar(model, prompt, cfg: SampleConfig, *, eos_id, prompt_mask, generator, history, **_) -> torch.Tensor:
    return ar_generate(
        model, prompt, eos_id=eos_id, gen_length=cfg.gen_length, temperature=cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, prompt_mask=prompt_mask, stop_at_eos=cfg.stop_at_eos,
        generator=generator, history=history,
    )


@SAMPLERS.register("ancestral")
def _run_ancestral(model, prompt, cfg: SampleConfig, *, mask_id, eos_id, time_conditioned, prompt_mask, generator,
                   history, **_):
    return ancestral_generate(
        model, prompt, mask_id=mask_id, gen_length=cfg.gen_length, steps=cfg.steps, schedule=cfg.schedule,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, time_conditioned=time_conditioned,
        prompt_mask=prompt_mask, eos_id=eos_id if cfg.stop_at_eos else None, generator=generator, history=history,
    )[0]


@SAMPLERS.register("confidence")
def _run_confidence(model, prompt, cfg: SampleConfig, *, mask_id, eos_id, time_conditioned, prompt_mask, generator,
                    history, **_):
    return confidence_generate(
        model, prompt, mask_id=mask_id, gen_length=cfg.gen_length, steps=cfg.steps,
        block_length=cfg.block_length, temperature=cfg.temperature, remasking=cfg.remasking,
        cfg_scale=cfg.cfg_scale, threshold=cfg.threshold, top_k=cfg.top_k, top_p=cfg.top_p, cache=cfg.cache,
        prompt_mask=prompt_mask, eos_id=eos_id if cfg.stop_at_eos else None,
        schedule=cfg.schedule if time_conditioned else None,
        generator=generator, history=history,
    )


@SAMPLERS.register("block")
def _run_block(model, prompt, cfg: SampleConfig, *, mask_id, eos_id, prompt_mask, generator, history,
               block_size=None, **_):
    """BD3-LM: blocks of ``cfg.block_length`` (default: the model's own), an exact KV cache, ``cfg.steps`` spread
    over the blocks to generate (at least one step each). Left-padded prompts run row by row, unpadded."""
    size = cfg.block_length or block_size
    if not size:
        raise DlmError("the block sampler needs a block size: pass --block-length (a bd3lm model's is the default)")

    def generate(p, g, hist):
        blocks = num_blocks_to_generate(p.shape[1], cfg.gen_length, size)
        return block_generate(
            model, p, mask_id=mask_id, block_size=size, gen_length=cfg.gen_length,
            steps_per_block=max(1, -(-cfg.steps // blocks)), schedule=cfg.schedule, temperature=cfg.temperature,
            top_k=cfg.top_k, top_p=cfg.top_p, eos_id=eos_id if cfg.stop_at_eos else None, generator=g, history=hist,
        )[0]

    return row_by_row(generate, prompt, prompt_mask, generator, history, takes_generator_list=True)


@SAMPLERS.register("esolm")
def _run_esolm(model, prompt, cfg: SampleConfig, *, mask_id, eos_id, prompt_mask, generator, history, alpha0=None,
               variant=None, **_):
    """Eso-LM: ``cfg.steps`` diffusion steps with the model's alpha0 and variant, then the sequential phase, with the
    exact KV cache (variant A: in the sequential phase only). Left-padded prompts run row by row, unpadded."""
    if alpha0 is None or variant is None:
        raise DlmError("the esolm sampler needs the model's alpha0 and variant: sample a model trained with "
                       "--objective esolm")

    def generate(p, g, hist):
        return esolm_generate(
            model, p, mask_id=mask_id, alpha0=alpha0, variant=variant, gen_length=cfg.gen_length, steps=cfg.steps,
            temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
            eos_id=eos_id if cfg.stop_at_eos else None, generator=g, history=hist,
        )[0]

    return row_by_row(generate, prompt, prompt_mask, generator, history, takes_generator_list=True)


def _embedding_sampler(ode_sampler: str):
    """Diffusion-LM: ``ode_sampler`` in embedding space with the clamping trick (``--sampler embed-NAME``)."""

    def run(model, prompt, cfg: SampleConfig, *, mask_id, pad_id=None, prompt_mask=None, generator, history, **_):
        exclude = tuple(i for i in (mask_id, pad_id) if i is not None)

        def generate(p, g, hist):
            return diffusion_lm_generate(
                model, p, gen_length=cfg.gen_length, steps=cfg.steps, schedule=cfg.schedule,
                ode_sampler=ode_sampler, exclude=exclude, generator=g, history=hist,
            )[0]

        return row_by_row(generate, prompt, prompt_mask, generator, history, takes_generator_list=False)

    return run


for _name in ("ddpm", "ddim", "dpmpp-2m"):
    SAMPLERS.register(f"embed-{_name}", _embedding_sampler(_name))


def _sedd_sampler(method: str):
    """SEDD (``--objective sedd``): ``method`` steps on the learned ratios, then the denoising step."""

    def run(model, prompt, cfg: SampleConfig, *, mask_id, eos_id, time_conditioned, prompt_mask, generator, history,
            graph="absorb", vocab_size=None, **_):
        if cfg.temperature != 1.0 or cfg.top_k or cfg.top_p < 1.0:
            raise DlmError("the sedd samplers draw from the reverse process as it is: --temperature, --top-k and "
                           "--top-p do not apply to them")
        return sedd_generate(
            model, prompt, graph=graph, method=method, mask_id=mask_id, vocab_size=vocab_size,
            gen_length=cfg.gen_length, steps=cfg.steps, schedule=cfg.schedule, time_conditioned=time_conditioned,
            prompt_mask=prompt_mask, eos_id=eos_id if cfg.stop_at_eos else None, generator=generator,
            history=history,
        )[0]

    return run


SAMPLERS.register("sedd-analytic", _sedd_sampler("analytic"))
SAMPLERS.register("sedd-euler", _sedd_sampler("euler"))


@SAMPLERS.register("udlm")
def _run_udlm(model, prompt, cfg: SampleConfig, *, mask_id, eos_id, prompt_mask, generator, history,
              vocab_size=None, **_):
    """UDLM (``--objective udlm``): ancestral steps of the uniform-state reverse process from uniformly random ids;
    every generated token may change at every step. It is SEDD's analytic step on the ratios of the predicted x0
    (``dlm.objectives.udlm``), ending at t = 0 with a draw from x_theta's posterior."""
    if cfg.temperature != 1.0 or cfg.top_k or cfg.top_p < 1.0:
        raise DlmError("the udlm sampler draws from the reverse process as it is: --temperature, --top-k and "
                       "--top-p do not apply to it")
    return sedd_generate(
        MeanRatios(model, cfg.schedule, mask_id), prompt, graph="uniform", method="analytic", mask_id=mask_id,
        vocab_size=vocab_size, gen_length=cfg.gen_length, steps=cfg.steps, schedule=cfg.schedule,
        time_conditioned=True, prompt_mask=prompt_mask, eos_id=eos_id if cfg.stop_at_eos else None,
        generator=generator, history=history,
    )[0]


__all__ = [
    "CACHES",
    "SAMPLERS",
    "SampleConfig",
    "model_options",
    "left_pad",
    "REMASKING",
    "ar_generate",
    "ancestral_generate",
    "confidence_generate",
    "block_generate",
    "esolm_generate",
    "num_transfer_tokens",
    "gumbel_noise",
    "sample_categorical",
    "ODE_SAMPLERS",
    "guided",
    "time_grid",
    "diffusion_lm_generate",
    "clamp_to_embeddings",
    "nearest_tokens",
    "sedd_generate",
    "sedd_euler",
    "sedd_analytic",
]
