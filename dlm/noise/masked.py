"""The masked (absorbing) process of MDLM / LLaDA: corruption, the SUBS parameterisation and the reverse step.

- Forward: each token independently becomes ``<|mask|>`` w.p. 1 - alpha(t) (``mask_tokens``).
- SUBS: the model's distribution over x0 puts no mass on the mask (its logit is set to -inf) and unmasked
  positions are carried over (``subs_log_probs``; the carry-over is where the reverse step leaves clean tokens).
- Reverse step t -> s (s < t): a masked position is revealed w.p. (alpha(s) - alpha(t)) / (1 - alpha(t))
  (``MaskedProcess.reveal_prob``) and then takes a token drawn from p_theta(x0 | xt); clean tokens never change.
  At s = 0 every masked position is revealed.

Nothing here calls a model: objectives and samplers pass in the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.noise.categorical import Generators, sample_categorical, uniform
from dlm.noise.schedules import Schedule, get_schedule


def mask_tokens(
    x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, mask_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0: [B, L], t: [B] -> (xt [B, L], masked [B, L] bool)."""
    p_mask = (1.0 - schedule.alpha(t))[:, None]  # (B, 1)
    masked = torch.rand(x0.shape, generator=generator, device=x0.device) < p_mask  # (B, L)
    return torch.where(masked, torch.full_like(x0, mask_id), x0), masked


def subs_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: log-softmax in float32 with zero mass on the mask token. [B, L, V] -> [B, L, V]."""
    logits = logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    return F.log_softmax(logits, dim=-1)


class MaskedProcess:
    """The masked process for one schedule and mask id: ``corrupt``, ``log_probs`` (SUBS), ``reveal_prob`` and
    ``step``. Used by the masked, block and Eso-LM objectives and by the ancestral, block and esolm samplers."""

    def __init__(self, schedule: str | Schedule, mask_id: int):
        self.schedule, self.mask_id = get_schedule(schedule), mask_id

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 [B, L], t [B] -> (xt, masked), each [B, L]."""
        return mask_tokens(x0, t, self.schedule, self.mask_id, generator)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log p_theta(x0 | xt) [B, L, V] under SUBS."""
        return subs_log_probs(logits, self.mask_id)

    def reveal_prob(self, s, t) -> torch.Tensor:
        """The probability that a position masked at time t is clean at time s < t: (alpha_s - alpha_t) /
        (1 - alpha_t); 1 at s = 0 (alpha(0) = 1)."""
        s, t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
        alpha_s, alpha_t = self.schedule.alpha(s), self.schedule.alpha(t)
        return (alpha_s - alpha_t) / (1.0 - alpha_t)

    def step(
        self,
        x: torch.Tensor,
        log_p: torch.Tensor,
        s,
        t,
        generator: Generators = None,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        rows: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One reverse step t -> s of x [B, L] given log p_theta(x0 | x) [B, L, V]: a new canvas (x is unchanged).

        Draws, in float64: one uniform per position (from ``starts[j]`` on in row j, only in ``rows``), then
        tokens only at the revealed positions (row by row when there is one generator per row, so a row's draws
        do not depend on its batch). ``s = 0`` reveals every masked position without drawing uniforms."""
        masked = x == self.mask_id  # (B, L)
        if float(s) <= 0.0:
            reveal = masked
        else:
            u = uniform(x.shape, generator=generator, device=x.device, rows=rows, starts=starts)  # (B, L)
            reveal = masked & (u < self.reveal_prob(s, t))
        x_new = x.clone()
        draw = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        if generator is None or isinstance(generator, torch.Generator):
            x_new[reveal] = sample_categorical(log_p[reveal], generator=generator, **draw)
        else:
            for j, g in enumerate(generator):
                if reveal[j].any():
                    x_new[j, reveal[j]] = sample_categorical(log_p[j, reveal[j]], generator=g, **draw)
        return x_new
