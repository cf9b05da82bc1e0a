"""The SFT losses: the likelihood of the response given the prompt, which is never masked (LLaDA's SFT).

Masked diffusion, for a row x0 = prompt + response (+ EOS padding, part of the response) and one draw of t:

    NELBO(response | prompt) = w(t) * sum_{l in response, xt^l = m} -log p_theta(x0^l | xt)

``masked_nelbo``'s draw with the masks outside the response dropped: for one row it equals
``conditional_masked_nelbo(model, x0, target=response, num_samples=1)`` with the same generator. The training loss
divides each row's NELBO by its response length and averages the rows (LLaDA). Classifier-free guidance's
unconditional model: with ``cond_dropout`` p each row, with probability p, sees every prompt position as the mask
token (as the confidence sampler's unconditional rows do); its loss is the same response NELBO.

Autoregressive (the baseline): next-token cross-entropy on the response up to its own EOS (the padding after it is
never generated: an AR model stops at its first EOS).
"""

from __future__ import annotations

import torch

from dlm.data.sft import SFTBatch
from dlm.errors import DlmError
from dlm.noise import get_schedule, mask_tokens, sample_times
from dlm.noise.masked import subs_log_probs
from dlm.objectives.ar import ar_token_nll
from dlm.objectives.base import LossOutput

SFT_OBJECTIVES = ("mdlm", "ar")  # the objectives dlm sft trains


def response_nelbo(
    model,
    x0: torch.Tensor,
    response: torch.Tensor,
    *,
    mask_id: int,
    schedule="loglinear",
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
    cond_dropout: float = 0.0,
) -> torch.Tensor:
    """One-draw masked-diffusion NELBO of the ``response`` positions [B, L] of x0 [B, L] given the others, [B] nats;
    with ``cond_dropout`` p, each row's prompt is replaced by masks with probability p (one draw per row, after the
    masks)."""
    schedule = get_schedule(schedule)
    # 1. sample t, one per row (antithetic across the batch)
    t = sample_times(x0.shape[0], generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device)  # (B,)
    # 2. corrupt the response only: the prompt is never masked
    _, masked = mask_tokens(x0, t, schedule, mask_id, generator)  # (B, L)
    masked = masked & response
    xt = torch.where(masked, mask_id, x0)  # (B, L)
    if cond_dropout > 0.0:  # CFG's unconditional rows: the whole prompt masked
        drop = torch.rand(x0.shape[0], generator=generator, device=x0.device) < cond_dropout  # (B,)
        xt = torch.where(drop[:, None] & ~response, mask_id, xt)
    # 3. predict x0 from xt (SUBS)
    log_p = subs_log_probs(model(xt, t), mask_id)  # (B, L, V)
    nll = -log_p.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    # 4. weight the masked response positions' cross-entropy by w(t)
    nll = torch.where(masked, nll, torch.zeros_like(nll))
    return schedule.weight(t) * nll.sum(-1)  # (B,)


def response_ar_nll(model, x0: torch.Tensor, trained: torch.Tensor, *, bos_id: int) -> torch.Tensor:
    """-log p(x0[trained] | everything before it), [B] nats (``model`` causal; its start token ``bos_id``)."""
    nll = ar_token_nll(model, x0, eos_id=bos_id)  # (B, L)
    return torch.where(trained, nll, torch.zeros_like(nll)).sum(-1)


def sft_loss(objective, model, batch: SFTBatch, generator, cond_dropout: float = 0.0) -> LossOutput:
    """The SFT loss of ``batch`` under the run's ``objective`` (mdlm or ar): each row's response NLL (bound) per
    response token, averaged over the rows."""
    if objective.name == "ar":
        if cond_dropout > 0.0:
            raise DlmError("sft.cond_dropout trains the unconditional model of CFG: it applies to mdlm, not ar")
        trained = batch.response & ~batch.padding  # (B, L) the response and its own EOS
        nll = response_ar_nll(model, batch.tokens, trained, bos_id=objective.bos_id)
    elif objective.name == "mdlm":
        trained = batch.response
        nll = response_nelbo(
            model,
            batch.tokens,
            trained,
            mask_id=objective.mask_id,
            schedule=objective.schedule,
            generator=generator,
            antithetic=objective.antithetic,
            cond_dropout=cond_dropout,
        )
    else:
        raise DlmError(f"dlm sft trains {' and '.join(SFT_OBJECTIVES)} models, not {objective.name}")
    tokens = trained.sum(-1).clamp_min(1)  # (B,)
    loss = (nll / tokens).mean()
    return LossOutput(loss=loss, metrics={"response_tokens": tokens.float().mean().detach()})
