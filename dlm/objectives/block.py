"""Block diffusion (BD3-LM, Arriola et al. 2025): masked diffusion inside blocks, autoregressive across them.

The sequence x0 of length L is cut into B = L / k blocks of k tokens. For one sequence (BD3-LM eq. 8):

    -log p(x0) <= NELBO(x0)
               = sum_b E_{t_b ~ U(0,1)} [ w(t_b) sum_{l in block b : xt^l = m} -log p_theta(x0^l | xt^b, x0^{<b}) ]

with w(t) = -alpha'(t) / (1 - alpha(t)), tight when p_theta is the data's exact conditional. k = L is masked
diffusion (MDLM); k = 1 is an autoregressive model (in expectation over t).

One pass for every block: the model reads xt concatenated with x0 (length 2L) under ``bd3_attention_mask``: an xt
token of block b sees the xt tokens of block b (both ways) and the x0 tokens of blocks < b; an x0 token of block b
sees the x0 tokens of blocks <= b. Both halves use RoPE positions 0..L-1; the logits of the first L positions are
p_theta(. | xt^b, x0^{<b}). SUBS as in ``masked``: no mass on the mask token, unmasked positions cost nothing.

Times: one t per block. Training draws them from the clipped range U[beta, omega] (``BD3LM.Config``'s clip_beta
and clip_omega, default [0.3, 0.8]), which cuts the variance of the loss but is no longer a bound; evaluation
(``nll``) always uses U[t_min, 1].
No time conditioning: the model is not told the blocks' noise levels (SUBS infers them from the masks, as MDLM's
default does); ``BD3LM.configure`` rejects ``model.time_conditioning``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DlmError
from dlm.noise.block import bd3_attention_mask, mask_blocks, sample_block_times
from dlm.noise.masked import subs_log_probs
from dlm.noise.schedules import Schedule, get_schedule
from dlm.objectives.base import LossOutput, Objective, monte_carlo


def check_block_size(length: int, block_size: int) -> int:
    """The number of blocks; a one-line error when ``block_size`` does not cut ``length`` into whole blocks."""
    if block_size <= 0 or length % block_size:
        raise DlmError(f"block size {block_size} must be positive and divide the sequence length {length}")
    return length // block_size


def _block_draw(model, x0, t, block_size: int, schedule: Schedule, mask_id: int, generator):
    """One Monte Carlo draw at block times t [B, L/k]: (per-sequence weighted NLL [B], fraction masked)."""
    B, L = x0.shape
    # 1. corrupt: each token of block b masked w.p. 1 - alpha(t_b)
    xt, masked = mask_blocks(x0, t, block_size, schedule, mask_id, generator)  # (B, L), (B, L)
    # 2. one pass over [xt, x0] with the block-diffusion mask; RoPE positions 0..L-1 in both halves
    positions = torch.arange(L, device=x0.device).repeat(2)  # (2L,)
    attn_mask = bd3_attention_mask(L, block_size, device=x0.device)  # (2L, 2L)
    logits = model(torch.cat([xt, x0], dim=1), None, attn_mask=attn_mask, positions=positions)[:, :L]  # (B, L, V)
    log_p = subs_log_probs(logits, mask_id)
    nll = -log_p.gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    # 3. each block's masked cross-entropy weighted by w(t_b)
    nll = torch.where(masked, nll, torch.zeros_like(nll))  # unmasked positions are carried over: no cost
    per_block = nll.view(B, -1, block_size).sum(-1)  # (B, L/k)
    return (schedule.weight(t) * per_block).sum(-1), masked.float().mean()


def block_nelbo(
    model,
    x0: torch.Tensor,
    *,
    block_size: int,
    mask_id: int,
    schedule: str | Schedule = "loglinear",
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_range: tuple[float, float] = (1e-3, 1.0),
) -> torch.Tensor:
    """Per-sequence block-diffusion NELBO in nats, [B]: the mean of ``num_samples`` draws of the block times.

    ``model(x: LongTensor[B, 2L], t=None, *, attn_mask: bool[2L, 2L], positions: LongTensor[2L]) -> logits
    [B, 2L, V]`` can be any callable. The times of all B * num_samples * (L / k) blocks are drawn together
    (antithetic across them) in ``t_range``; the default [t_min, 1] omits O(t_min) nats per sequence, as
    ``masked_nelbo`` does. With block_size = L, the draws (times, then one uniform per position) are those of
    ``masked_nelbo`` for the same generator, and so is the value for a model that sees xt alone.
    """
    schedule = get_schedule(schedule)
    num_blocks = check_block_size(x0.shape[1], block_size)
    return monte_carlo(
        lambda t: _block_draw(model, x0, t, block_size, schedule, mask_id, generator)[0],
        lambda n: sample_block_times(
            n, num_blocks, generator=generator, antithetic=antithetic, t_range=t_range, device=x0.device
        ),
        num_samples=num_samples,
        batch_size=x0.shape[0],
        device=x0.device,
    )


class BD3LM(Objective):
    """Block diffusion: training draws block times in the clipped range [clip_beta, clip_omega]; ``nll`` is
    ``block_nelbo`` with U[t_min, 1], never clipped."""

    name = "bd3lm"
    samplers = ("block",)

    @dataclass(frozen=True)
    class Config:
        block_size: int = 16  # tokens per block (must divide data.seq_len)
        clip_beta: float = 0.3  # training draws each block's t from U[clip_beta, clip_omega] (eval: U[eps, 1])
        clip_omega: float = 0.8

        def __post_init__(self):
            if self.block_size <= 0:
                raise DlmError(
                    f"--block-size {self.block_size} must be positive (objective.block_size, tokens per "
                    f"block, a divisor of data.seq_len)"
                )
            if not 0.0 <= self.clip_beta < self.clip_omega <= 1.0:
                raise DlmError(
                    f"the clipped schedule needs 0 <= objective.clip_beta < objective.clip_omega <= 1, "
                    f"got [{self.clip_beta}, {self.clip_omega}]"
                )

    @classmethod
    def configure(cls, run_config) -> None:
        """Whole blocks in a training sequence, a known schedule, and no time conditioning (SUBS)."""
        block_size, seq_len = run_config.objective_config().block_size, run_config.data.seq_len
        if seq_len % block_size:
            raise DlmError(
                f"--block-size {block_size} must be positive and divide data.seq_len {seq_len}; "
                f"e.g. --block-size 4, 8 or 16"
            )
        get_schedule(run_config.train.schedule)  # an unknown name lists the valid ones
        if run_config.model.time_conditioning:
            raise DlmError("bd3lm models take no time (SUBS): drop model.time_conditioning")

    def loss(self, model, batch, generator) -> LossOutput:
        """One draw per sequence with block times in [clip_beta, clip_omega], in nats per token."""
        c = self.config
        schedule = get_schedule(self.schedule)
        B, L = batch.shape
        t = sample_block_times(
            B,
            check_block_size(L, c.block_size),
            generator=generator,
            antithetic=self.antithetic,
            t_range=(c.clip_beta, c.clip_omega),
            device=batch.device,
        )  # (B, L/k)
        nelbo, masked_frac = _block_draw(model, batch, t, c.block_size, schedule, self.mask_id, generator)
        return LossOutput(loss=nelbo.mean() / L, metrics={"masked_frac": masked_frac.detach()})

    def nll(self, model, x0, num_samples, generator) -> torch.Tensor:
        return block_nelbo(
            model,
            x0,
            block_size=self.config.block_size,
            mask_id=self.mask_id,
            schedule=self.schedule,
            num_samples=num_samples,
            generator=generator,
        )
