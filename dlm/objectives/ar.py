"""Autoregressive next-token cross-entropy (the baseline every diffusion model is compared with).

Every sequence is scored in full: the input is ``<|endoftext|>`` followed by x0[:-1] (EOS doubles as the start
token, as it separates documents in the stream), so AR and diffusion models both score exactly L tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlm.objectives.base import LossOutput


def ar_token_nll(model, x0: torch.Tensor, *, eos_id: int) -> torch.Tensor:
    """-log p(x0^l | x0^{<l}) for every position: [B, L] in nats. ``model`` must attend causally."""
    B, L = x0.shape
    inputs = torch.cat([torch.full((B, 1), eos_id, dtype=x0.dtype, device=x0.device), x0[:, :-1]], dim=1)
    logits = model(inputs).float()  # (B, L, V)
    return F.cross_entropy(logits.flatten(0, 1), x0.flatten(), reduction="none").view(B, L)


def ar_loss(model, x0: torch.Tensor, *, eos_id: int, **_) -> LossOutput:
    nll = ar_token_nll(model, x0, eos_id=eos_id)  # (B, L)
    return LossOutput(loss=nll.mean())


def ar_sequence_nll(model, x0: torch.Tensor, *, eos_id: int, **_) -> torch.Tensor:
    """Exact -log p(x0) per sequence, [B] nats."""
    return ar_token_nll(model, x0, eos_id=eos_id).sum(-1)
