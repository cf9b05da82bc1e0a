"""Autoregressive next-token cross-entropy (the baseline every diffusion model is compared with).

Every sequence is scored in full: the input is the start token followed by x0[:-1] (``<|endoftext|>`` for dlm's
own tokenizers, where it separates documents in the stream; a pretrained model's BOS), so AR and diffusion models
both score exactly L tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.objectives.base import LossOutput, Objective


def ar_token_nll(model, x0: torch.Tensor, *, eos_id: int) -> torch.Tensor:
    """-log p(x0^l | x0^{<l}) for every position: [B, L] in nats. ``model`` must attend causally."""
    B, L = x0.shape
    inputs = torch.cat([torch.full((B, 1), eos_id, dtype=x0.dtype, device=x0.device), x0[:, :-1]], dim=1)
    logits = model(inputs).float()  # (B, L, V)
    return F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view(B, L)


def ar_sequence_nll(model, x0: torch.Tensor, *, eos_id: int) -> torch.Tensor:
    """Exact -log p(x0) per sequence, [B] nats."""
    return ar_token_nll(model, x0, eos_id=eos_id).sum(-1)


class AR(Objective):
    """Next-token prediction with a causal backbone; ``nll`` is exact (no Monte Carlo draws)."""

    name = "ar"
    causal = True
    is_bound = False
    samplers = ("ar",)

    @classmethod
    def configure(cls, run_config) -> None:
        if run_config.model.time_conditioning:
            raise DlmError("the ar objective has no time: drop model.time_conditioning")

    def loss(self, model, batch, generator) -> LossOutput:
        return LossOutput(loss=ar_token_nll(model, batch, eos_id=self.bos_id).mean())

    def nll(self, model, x0, num_samples, generator) -> torch.Tensor:
        return ar_sequence_nll(model, x0, eos_id=self.bos_id)
