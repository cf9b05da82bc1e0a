"""Eso-LM (Sahoo et al. 2025, Esoteric Language Models): masked diffusion down to a partly masked z0, then an
autoregressive pass that fills z0's masks left to right.

alpha0 in [0, 1] is the expected fraction of tokens produced by diffusion. The schedule is alpha_t = alpha0 (1 - t)
(``HybridSchedule``): each token is masked w.p. 1 - alpha_t, and z0 ~ q0 masks each token w.p. 1 - alpha0. For
one sequence x of length L:

    NELBO(x) = E_{z0 ~ q0} [ sum_{l masked in z0} -log p_theta(x^l | z0, x^{<l}) ]                    (AR part)
             + int_0^1 w(t) E_{zt} [ sum_{l masked in zt} -log p_theta(x^l | zt) ] dt              (diffusion part)

with w(t) = -alpha_t' / (1 - alpha_t) = alpha0 / (1 - alpha0 (1 - t)); an upper bound on -log p(x), tight for the
data's exact conditionals. alpha0 = 1 is MDLM with the linear schedule; alpha0 = 0 is an AR model. SUBS as in
``masked`` (no mass on the mask token, clean positions cost nothing); no time conditioning.

Attention (True = attend) comes from per-position ranks instead of reordering the tokens; RoPE keeps the original
positions. ``rank`` is a random permutation that puts every clean token before every masked one.
- Diffusion pass on zt (``esolm_diffusion_mask``). Variant B (cacheable): i attends j iff rank[j] <= rank[i],
  causal in permutation order. Variant A: clean tokens attend every clean token; a masked token attends every clean
  token and itself (no mask-to-mask attention): better likelihood, no KV cache in the diffusion phase.
- Sequential pass on [z0, x] (2L tokens, positions 0..L-1 twice; ``esolm_sequential_mask``): clean z0 tokens as in
  the diffusion pass (restricted to clean z0 tokens); a masked z0 token i (whose logits predict x^i) attends the
  clean z0 tokens, itself and the x copies of the z0-masked positions j < i; an x token j masked in z0 attends the
  clean z0 tokens and the x copies of the z0-masked positions j' <= j; an x token clean in z0 attends itself only
  (it is never attended to). This is what the cached sampler (``dlm.samplers.esolm``) sees, so its cache is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.errors import DlmError
from dlm.noise import mask_tokens, sample_times
from dlm.noise.hybrid import VARIANTS, HybridSchedule, esolm_diffusion_mask, esolm_sequential_mask
from dlm.noise.masked import subs_log_probs
from dlm.objectives.base import LossOutput, Objective, monte_carlo


def random_ranks(clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """clean: bool [B, L] -> rank [B, L], a uniformly random permutation of 0..L-1 per row with every clean
    position ranked before every masked one (one uniform per position)."""
    u = torch.rand(clean.shape, generator=generator, device=clean.device)  # (B, L)
    order = (u + (~clean).float() * 2.0).argsort(dim=1, stable=True)  # positions by rank
    return order.argsort(dim=1)


def esolm_diffusion_nll(model, x0, zt, masked, rank, variant: str, mask_id: int) -> torch.Tensor:
    """sum_{l masked in zt} -log p_theta(x0^l | zt) per sequence [B]: one pass over zt."""
    L = x0.shape[1]
    attn_mask = esolm_diffusion_mask(~masked, rank, variant)  # (B, L, L)
    logits = model(zt, None, attn_mask=attn_mask, positions=torch.arange(L, device=x0.device))  # (B, L, V)
    nll = -subs_log_probs(logits, mask_id).gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    return torch.where(masked, nll, torch.zeros_like(nll)).sum(-1)


def esolm_sequential_nll(model, x0, z0, masked, rank, variant: str, mask_id: int) -> torch.Tensor:
    """sum_{l masked in z0} -log p_theta(x0^l | z0, x0^{<l}) per sequence [B]: one pass over [z0, x0]."""
    L = x0.shape[1]
    attn_mask = esolm_sequential_mask(~masked, rank, variant)  # (B, 2L, 2L)
    positions = torch.arange(L, device=x0.device).repeat(2)  # (2L,)
    logits = model(torch.cat([z0, x0], 1), None, attn_mask=attn_mask, positions=positions)[:, :L]  # (B, L, V)
    nll = -subs_log_probs(logits, mask_id).gather(-1, x0[..., None]).squeeze(-1)  # (B, L)
    return torch.where(masked, nll, torch.zeros_like(nll)).sum(-1)


def _esolm_draw(model, x0, t, alpha0: float, variant: str, mask_id: int, generator):
    """One Monte Carlo draw at times t [B]: (per-sequence NELBO [B], fraction masked in zt, fraction masked in z0).

    Draws, in this order: the zt masks (one uniform per position, as ``mask_tokens``); variant B with alpha0 > 0:
    zt's ranks; alpha0 < 1: z0's masks, then (variant B) z0's ranks. Which draws happen depends on alpha0 and the
    variant only, so with alpha0 = 1, variant A, the draws are those of ``masked_nelbo(schedule="linear")``."""
    schedule = HybridSchedule(alpha0)
    B = x0.shape[0]
    total = torch.zeros(B, device=x0.device)
    # 1. diffusion part: zt ~ q_t, w(t) * sum_{masked in zt} -log p(x^l | zt); w = 0 when alpha0 = 0
    zt, masked = mask_tokens(x0, t, schedule, mask_id, generator)  # (B, L), (B, L)
    if alpha0 > 0:
        rank = random_ranks(~masked, generator) if variant == "B" else None
        total = total + schedule.weight(t) * esolm_diffusion_nll(model, x0, zt, masked, rank, variant, mask_id)
    # 2. sequential part: z0 ~ q0, sum_{masked in z0} -log p(x^l | z0, x^{<l}); nothing is masked when alpha0 = 1
    masked0 = torch.zeros_like(masked)
    if alpha0 < 1:
        z0, masked0 = mask_tokens(x0, torch.zeros_like(t), schedule, mask_id, generator)
        rank0 = random_ranks(~masked0, generator) if variant == "B" else None
        if masked0.any():
            total = total + esolm_sequential_nll(model, x0, z0, masked0, rank0, variant, mask_id)
    return total, masked.float().mean(), masked0.float().mean()


def esolm_nelbo(
    model,
    x0: torch.Tensor,
    *,
    alpha0: float,
    variant: str,
    mask_id: int,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    t_min: float = 1e-3,
) -> torch.Tensor:
    """Per-sequence Eso-LM NELBO in nats, [B]: the mean of ``num_samples`` Monte Carlo draws.

    ``model(x: LongTensor[B, Lx], t=None, *, attn_mask: bool[B, Lx, Lx], positions: LongTensor[Lx]) -> logits
    [B, Lx, V]`` can be any callable (Lx = L for the diffusion pass, 2L for the sequential one). Times as in
    ``masked_nelbo``: all B * num_samples drawn together (antithetic) in [t_min, 1]."""
    EsoLM.Config(alpha0=alpha0, variant=variant)  # one-line errors for values out of range
    return monte_carlo(
        lambda t: _esolm_draw(model, x0, t, alpha0, variant, mask_id, generator)[0],
        lambda n: sample_times(n, generator=generator, antithetic=antithetic, t_min=t_min, device=x0.device),
        num_samples=num_samples,
        batch_size=x0.shape[0],
        device=x0.device,
    )


class EsoLM(Objective):
    """Eso-LM: masked diffusion down to z0 (about alpha0 of the tokens), then an AR pass over z0's masks; ``nll`` is
    ``esolm_nelbo``. The schedule is alpha0 (1 - t), whatever ``schedule`` says (``train.schedule`` is linear)."""

    name = "esolm"
    samplers = ("esolm",)
    default_schedule = "linear"

    @dataclass(frozen=True)
    class Config:
        alpha0: float = 1.0  # expected fraction of tokens made by diffusion (1 = masked diffusion, 0 = AR)
        variant: str = "B"  # attention: A (clean tokens attend both ways) or B (causal, KV-cacheable)

        def __post_init__(self):
            if not 0.0 <= self.alpha0 <= 1.0:
                raise DlmError(
                    f"--alpha0 {self.alpha0} must be in [0, 1] (objective.alpha0, the expected fraction "
                    f"of tokens made by diffusion; 1 = masked diffusion, 0 = autoregressive)"
                )
            if self.variant not in VARIANTS:
                raise DlmError(
                    f"--variant {self.variant} is not an Eso-LM variant; choose A (better likelihood) or "
                    f"B (KV cache in both phases)"
                )

    @classmethod
    def configure(cls, run_config) -> None:
        """The linear ``train.schedule`` (the objective's alpha0 (1 - t) is fixed) and no time conditioning."""
        if run_config.train.schedule != "linear":
            raise DlmError(
                f"--objective esolm fixes its schedule to alpha_t = alpha0 (1 - t), not "
                f"{run_config.train.schedule!r}; drop --schedule"
            )
        if run_config.model.time_conditioning:
            raise DlmError("esolm models take no time (SUBS): drop model.time_conditioning")

    def loss(self, model, batch, generator) -> LossOutput:
        """The NELBO of one draw per sequence, in nats per token; metrics masked_frac (zt) and ar_frac (z0)."""
        t = sample_times(batch.shape[0], generator=generator, antithetic=self.antithetic, device=batch.device)
        nelbo, masked_frac, ar_frac = _esolm_draw(
            model, batch, t, self.config.alpha0, self.config.variant, self.mask_id, generator
        )
        return LossOutput(
            loss=nelbo.mean() / batch.shape[1],
            metrics={"masked_frac": masked_frac.detach(), "ar_frac": ar_frac.detach()},
        )

    def nll(self, model, x0, num_samples, generator) -> torch.Tensor:
        return esolm_nelbo(
            model,
            x0,
            alpha0=self.config.alpha0,
            variant=self.config.variant,
            mask_id=self.mask_id,
            num_samples=num_samples,
            generator=generator,
        )
