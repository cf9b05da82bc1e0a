"""Objectives: plain functions over any callable model; ``OBJECTIVES`` lists them by name."""

from dlm.objectives.ar import ar_loss, ar_sequence_nll, ar_token_nll
from dlm.objectives.base import LossOutput, Objective
from dlm.objectives.block import (
    bd3lm_loss,
    bd3lm_options,
    bd3lm_sequence_nll,
    block_nelbo,
    configure_bd3lm,
)
from dlm.objectives.consistency import consistency_distillation_loss, consistency_function
from dlm.objectives.embedding import (
    configure_diffusion_lm,
    diffusion_lm_loss,
    diffusion_lm_nelbo,
    diffusion_lm_sequence_nll,
)
from dlm.objectives.esolm import (
    configure_esolm,
    esolm_diffusion_nll,
    esolm_loss,
    esolm_nelbo,
    esolm_options,
    esolm_sequence_nll,
    esolm_sequential_nll,
    random_ranks,
)
from dlm.objectives.gaussian import WEIGHTINGS, gaussian_loss, x0_loss_factor
from dlm.objectives.masked import masked_nelbo, mdlm_loss, mdlm_sequence_nll
from dlm.objectives.score_entropy import (
    GRAPHS,
    configure_sedd,
    score_entropy_nelbo,
    sedd_loss,
    sedd_options,
    sedd_sequence_nll,
)
from dlm.objectives.udlm import (
    MeanRatios,
    configure_udlm,
    udlm_loss,
    udlm_nelbo,
    udlm_options,
    udlm_sequence_nll,
)
from dlm.noise.block import bd3_attention_mask, block_causal_mask
from dlm.noise.gaussian import TARGETS, convert, predict_x0_eps, target_coefficients
from dlm.noise.graphs import log_ratios
from dlm.noise.hybrid import esolm_diffusion_mask, esolm_sequential_mask
from dlm.noise.masked import subs_log_probs
from dlm.noise.uniform import mean_log_ratios
from dlm.registry import Registry

OBJECTIVES: Registry[Objective] = Registry("objective")
OBJECTIVES.register(
    "ar", Objective("ar", ar_loss, ar_sequence_nll, causal=True, is_bound=False, samplers=("ar",))
)
OBJECTIVES.register(
    "mdlm",
    Objective(
        "mdlm", mdlm_loss, mdlm_sequence_nll, causal=False, is_bound=True, samplers=("confidence", "ancestral")
    ),
)
OBJECTIVES.register(
    "diffusion-lm",
    Objective(
        "diffusion-lm", diffusion_lm_loss, diffusion_lm_sequence_nll, causal=False, is_bound=True,
        samplers=("embed-ddpm", "embed-ddim", "embed-dpmpp-2m"),
        default_schedule="vp-sqrt", configure=configure_diffusion_lm,
    ),
)
OBJECTIVES.register(
    "sedd",
    Objective(
        "sedd", sedd_loss, sedd_sequence_nll, causal=False, is_bound=True, samplers=("sedd-analytic", "sedd-euler"),
        configure=configure_sedd, options=sedd_options,
    ),
)
OBJECTIVES.register(
    "udlm",
    Objective(
        "udlm", udlm_loss, udlm_sequence_nll, causal=False, is_bound=True, samplers=("udlm",),
        configure=configure_udlm, options=udlm_options,
    ),
)
OBJECTIVES.register(
    "bd3lm",
    Objective(
        "bd3lm", bd3lm_loss, bd3lm_sequence_nll, causal=False, is_bound=True, samplers=("block",),
        configure=configure_bd3lm, options=bd3lm_options,
    ),
)
OBJECTIVES.register(
    "esolm",
    Objective(
        "esolm", esolm_loss, esolm_sequence_nll, causal=False, is_bound=True, samplers=("esolm",),
        default_schedule="linear", configure=configure_esolm, options=esolm_options,
    ),
)

__all__ = [
    "OBJECTIVES",
    "Objective",
    "LossOutput",
    "ar_loss",
    "ar_sequence_nll",
    "ar_token_nll",
    "masked_nelbo",
    "mdlm_loss",
    "mdlm_sequence_nll",
    "subs_log_probs",
    "TARGETS",
    "WEIGHTINGS",
    "convert",
    "gaussian_loss",
    "predict_x0_eps",
    "target_coefficients",
    "x0_loss_factor",
    "consistency_function",
    "consistency_distillation_loss",
    "diffusion_lm_loss",
    "diffusion_lm_nelbo",
    "GRAPHS",
    "log_ratios",
    "score_entropy_nelbo",
    "sedd_loss",
    "sedd_sequence_nll",
    "MeanRatios",
    "mean_log_ratios",
    "udlm_loss",
    "udlm_nelbo",
    "udlm_sequence_nll",
    "bd3_attention_mask",
    "block_causal_mask",
    "block_nelbo",
    "bd3lm_loss",
    "bd3lm_sequence_nll",
    "esolm_diffusion_mask",
    "esolm_sequential_mask",
    "esolm_diffusion_nll",
    "esolm_sequential_nll",
    "esolm_nelbo",
    "esolm_loss",
    "esolm_sequence_nll",
    "random_ranks",
]
