"""Objectives: one configured class per loss (``OBJECTIVES``), over the plain functions that compute the losses
and bounds for any callable model.

    objective = OBJECTIVES.build(run_config, tokenizer)    # the run's objective, its options from run_config.objective
    objective = OBJECTIVES.get("bd3lm")(BD3LM.Config(block_size=4), mask_id=..., eos_id=..., vocab_size=...,
                                         schedule="loglinear")
    objective.loss(model, x0, generator) -> LossOutput;  objective.nll(model, x0, num_samples, generator) -> [B]
"""

# parameterisations shared with the samplers live in dlm.noise; re-exported here for the objectives' users
from dlm.noise.block import bd3_attention_mask, block_causal_mask  # noqa: E402
from dlm.noise.gaussian import TARGETS, convert, predict_x0_eps, target_coefficients  # noqa: E402
from dlm.noise.graphs import log_ratios  # noqa: E402
from dlm.noise.hybrid import esolm_diffusion_mask, esolm_sequential_mask  # noqa: E402
from dlm.noise.masked import subs_log_probs  # noqa: E402
from dlm.noise.uniform import mean_log_ratios  # noqa: E402
from dlm.objectives.ar import AR, ar_sequence_nll, ar_token_nll
from dlm.objectives.base import LossOutput, Objective, ObjectiveRegistry, monte_carlo
from dlm.objectives.block import BD3LM, block_nelbo
from dlm.objectives.consistency import consistency_distillation_loss, consistency_function
from dlm.objectives.embedding import DiffusionLM, diffusion_lm_nelbo
from dlm.objectives.esolm import (
    EsoLM,
    esolm_diffusion_nll,
    esolm_nelbo,
    esolm_sequential_nll,
    random_ranks,
)
from dlm.objectives.gaussian import WEIGHTINGS, gaussian_loss, x0_loss_factor
from dlm.objectives.masked import MDLM, conditional_masked_nelbo, masked_nelbo
from dlm.objectives.score_entropy import GRAPHS, SEDD, score_entropy_loss, score_entropy_nelbo
from dlm.objectives.udlm import UDLM, MeanRatios, udlm_nelbo

OBJECTIVES = ObjectiveRegistry("objective")
for _cls in (AR, MDLM, DiffusionLM, SEDD, UDLM, BD3LM, EsoLM):
    OBJECTIVES.register(_cls.name, _cls)

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveRegistry",
    "LossOutput",
    "monte_carlo",
    "AR",
    "MDLM",
    "DiffusionLM",
    "SEDD",
    "UDLM",
    "BD3LM",
    "EsoLM",
    "ar_sequence_nll",
    "ar_token_nll",
    "masked_nelbo",
    "conditional_masked_nelbo",
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
    "diffusion_lm_nelbo",
    "GRAPHS",
    "log_ratios",
    "score_entropy_loss",
    "score_entropy_nelbo",
    "MeanRatios",
    "mean_log_ratios",
    "udlm_nelbo",
    "bd3_attention_mask",
    "block_causal_mask",
    "block_nelbo",
    "esolm_diffusion_mask",
    "esolm_sequential_mask",
    "esolm_diffusion_nll",
    "esolm_sequential_nll",
    "esolm_nelbo",
    "random_ranks",
]
