"""Masked diffusion (MDLM / LLaDA): the continuous-time NELBO with the SUBS parameterisation.

For one sequence x0 of length L (MDLM eq. 10):

    NELBO(x0) = E_{t ~ U(0,1)} [ w(t) * sum_{l : xt^l = m} -log p_theta(x0^l | xt) ],  w(t) = -alpha'(t) / (1 - alpha(t))

an upper bound on -log p(x0), tight when p_theta is the data's exact conditional. SUBS: the model puts no mass
on the mask token (its logit is set to -inf) and unmasked positions are carried over, so they cost nothing (only
masked positions enter the sum). With the linear schedule this is LLaDA's loss E_t[(1/t) sum_masked CE].
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError
from dlm.noise import get_schedule, mask_tokens, sample_times
from dlm.noise.masked import subs_log_probs
from dlm.noise.schedules import Schedule
from dlm.objectives.base import LossOutput


def _masked_draw(model, x0, t, schedule: Schedule, mask_id: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One Monte Carlo draw at times t [B]: (per-sequence weighted NLL [B], fraction of masked tokens)."""
    # 1. corrupt: mask each token w.p. 1 - alpha(t)
    xt, masked = mask_tokens(x0, t, schedule, mask_id, generator)  # (B, L), (B, L)
    # 2. predict x0 from xt (SUBS)
    log_p = subs_log_probs(model(xt, t), mask_id)  # (B, L, V)
    nll = -log_p.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    # 3. weight the masked positions' cross-entropy by w(t)
    nll = torch.where(masked, nll, torch.zeros_like(nll))  # unmasked positions are carried over: no cost
    return schedule.weight(t) * nll.sum(-1), masked.float().mean()


def masked_nelbo(
    model,
    x0: torch.Tensor,
    *,
    mask_id: int,
    schedule: str | Schedule = "loglinear",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
) -> torch.Tensor:
    """Per-sequence masked-diffusion NELBO in nats, [B]: the mean of ``num_samples`` Monte Carlo draws of t.

    ``model(xt: LongTensor[B, L], t: FloatTensor[B]) -> logits [B, L, V]`` can be any callable. Times are drawn
    antithetically over all B * num_samples draws (stratified per sequence), in [t_min, 1] as in MDLM: the omitted
    [0, t_min] part of the integral is O(t_min) nats per sequence.
    """
    if num_samples < 1:
        raise DlmError(f"num_samples must be at least 1, got {num_samples}")
    schedule = get_schedule(schedule)
    B = x0.shape[0]
    t_all = sample_times(
        num_samples * B, generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device
    ).view(num_samples, B)  # row s: the s-th draw of every sequence
    total = torch.zeros(B, device=x0.device)
    for s in range(num_samples):
        total = total + _masked_draw(model, x0, t_all[s], schedule, mask_id, generator)[0]
    return total / num_samples


def mdlm_loss(
    model,
    x0: torch.Tensor,
    *,
    mask_id: int,
    schedule: str | Schedule = "loglinear",
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    **_,
) -> LossOutput:
    """Training loss: the NELBO of one draw per sequence, in nats per token."""
    schedule = get_schedule(schedule)
    t = sample_times(x0.shape[0], generator=generator, antithetic=antithetic, device=x0.device)  # (B,)
    nelbo, masked_frac = _masked_draw(model, x0, t, schedule, mask_id, generator)
    return LossOutput(loss=nelbo.mean() / x0.shape[1], metrics={"masked_frac": masked_frac.item()})


def mdlm_sequence_nll(model, x0, *, mask_id: int, schedule="loglinear", num_samples=1, generator=None, **_):
    return masked_nelbo(model, x0, mask_id=mask_id, schedule=schedule, num_samples=num_samples, generator=generator)
