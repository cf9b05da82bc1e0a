"""Masked diffusion (MDLM / LLaDA): the continuous-time NELBO with the SUBS parameterisation.

For one sequence x0 of length L (MDLM eq. 10):

    NELBO(x0) = E_{t ~ U(0,1)} [ w(t) * sum_{l : xt^l = m} -log p_theta(x0^l | xt) ],
    w(t) = -alpha'(t) / (1 - alpha(t))

an upper bound on -log p(x0), tight when p_theta is the data's exact conditional. SUBS: the model puts no mass
on the mask token (its logit is set to -inf) and unmasked positions are carried over, so they cost nothing (only
masked positions enter the sum). With the linear schedule this is LLaDA's loss E_t[(1/t) sum_masked CE].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.noise import get_schedule, mask_tokens, sample_times
from dlm.noise.masked import subs_log_probs
from dlm.noise.schedules import Schedule
from dlm.objectives.base import LossOutput, Objective, monte_carlo


def _masked_draw(
    model, x0, t, schedule: Schedule, mask_id: int, generator, bos_id: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Monte Carlo draw at times t [B]: (per-sequence weighted NLL [B], fraction of masked tokens). With
    ``bos_id`` (a shifted model) the sequence is scored after that start token, which is never masked."""
    # 1. corrupt: mask each token w.p. 1 - alpha(t)
    xt, masked = mask_tokens(x0, t, schedule, mask_id, generator)  # (B, L), (B, L)
    masked_frac = masked.float().mean()
    if bos_id is not None:  # the start token is clean and costs nothing: the NELBO of x0 given it
        start = torch.full_like(x0[:, :1], bos_id)
        x0, xt, masked = torch.cat([start, x0], 1), torch.cat([start, xt], 1), F.pad(masked, (1, 0))
    # 2. predict x0 from xt (SUBS)
    log_p = subs_log_probs(model(xt, t), mask_id)  # (B, L, V)
    nll = -log_p.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    # 3. weight the masked positions' cross-entropy by w(t)
    nll = torch.where(masked, nll, torch.zeros_like(nll))  # unmasked positions are carried over: no cost
    return schedule.weight(t) * nll.sum(-1), masked_frac


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
    bos_id: int | None = None,
) -> torch.Tensor:
    """Per-sequence masked-diffusion NELBO in nats, [B]: the mean of ``num_samples`` Monte Carlo draws of t.
    ``bos_id``: a model with ``logits_shift`` scores x0 after this start token (never masked, no cost).

    ``model(xt: LongTensor[B, L], t: FloatTensor[B]) -> logits [B, L, V]`` can be any callable. Times are drawn
    antithetically over all B * num_samples draws (stratified per sequence), in [t_min, 1] as in MDLM: the omitted
    [0, t_min] part of the integral is O(t_min) nats per sequence.
    """
    schedule = get_schedule(schedule)
    return monte_carlo(
        lambda t: _masked_draw(model, x0, t, schedule, mask_id, generator, bos_id)[0],
        lambda n: sample_times(n, generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device),
        num_samples=num_samples,
        batch_size=x0.shape[0],
        device=x0.device,
    )


def conditional_masked_nelbo(
    model,
    x0: torch.Tensor,
    target: torch.Tensor,
    *,
    mask_id: int,
    schedule: str | Schedule = "loglinear",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
    batch_size: int | None = None,
) -> torch.Tensor:
    """The NELBO of the ``target`` positions of one sequence x0 [L] given the others, which are never masked
    (LLaDA's conditional likelihood estimate): an upper bound on -log p(x0[target] | x0[~target]), a scalar in nats,
    the mean of ``num_samples`` draws of t, ``batch_size`` draws per model call (all of them by default).

    The draws are ``masked_nelbo``'s on [x0] (the same times and uniforms) with the masks outside ``target``
    dropped: with ``target`` all True and ``batch_size=1`` it equals ``masked_nelbo(model, x0[None], ...)`` bit for
    bit; other batch sizes change only the rounding of the model's batched arithmetic."""
    if num_samples < 1:
        raise DlmError(f"num_samples must be at least 1, got {num_samples}")
    schedule = get_schedule(schedule)
    t = sample_times(num_samples, generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device)  # (S,)
    # 1. corrupt as masked_nelbo does (one mask_tokens call per draw), then keep the context clean
    draws = [mask_tokens(x0[None], t[s : s + 1], schedule, mask_id, generator)[1] for s in range(num_samples)]
    masked = torch.cat(draws) & target  # (S, L)
    xt = torch.where(masked, mask_id, x0)  # (S, L)
    # 2. predict x0 from xt (SUBS), batch_size draws per model call
    step = batch_size or num_samples
    per_draw = []
    for i in range(0, num_samples, step):
        log_p = subs_log_probs(model(xt[i : i + step], t[i : i + step]), mask_id)  # (k, L, V)
        nll = -log_p.gather(-1, x0.expand(log_p.shape[0], -1)[..., None]).squeeze(-1)  # (k, L)
        # 3. weight the masked target positions' cross-entropy by w(t)
        nll = torch.where(masked[i : i + step], nll, torch.zeros_like(nll))
        per_draw.append(schedule.weight(t[i : i + step]) * nll.sum(-1))  # (k,)
    per_draw = torch.cat(per_draw).float()  # (S,)
    total = torch.zeros(1, device=x0.device)
    for s in range(num_samples):  # summed in draw order, as monte_carlo does
        total = total + per_draw[s : s + 1]
    return (total / num_samples)[0]


class MDLM(Objective):
    """Masked diffusion (MDLM / LLaDA) with the SUBS parameterisation; ``nll`` is ``masked_nelbo``."""

    name = "mdlm"
    samplers = ("confidence", "ancestral")
    shifts = True

    @classmethod
    def configure(cls, run_config) -> None:
        get_schedule(run_config.train.schedule)  # an unknown name lists the valid ones

    def loss(self, model, batch, generator) -> LossOutput:
        """The NELBO of one draw per sequence, in nats per token."""
        schedule = get_schedule(self.schedule)
        t = sample_times(batch.shape[0], generator=generator, antithetic=self.antithetic, device=batch.device)
        bos = self.bos_id if self.logits_shift else None
        nelbo, masked_frac = _masked_draw(model, batch, t, schedule, self.mask_id, generator, bos)
        return LossOutput(loss=nelbo.mean() / batch.shape[1], metrics={"masked_frac": masked_frac.detach()})

    def nll(self, model, x0, num_samples, generator) -> torch.Tensor:
        return masked_nelbo(
            model,
            x0,
            mask_id=self.mask_id,
            schedule=self.schedule,
            num_samples=num_samples,
            generator=generator,
            bos_id=self.bos_id if self.logits_shift else None,
        )
