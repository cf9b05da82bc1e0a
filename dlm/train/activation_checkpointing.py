"""Activation checkpointing (``--set train.activation_checkpointing=true``; one process, DDP or FSDP).

Each transformer block keeps only its input for the backward and recomputes its activations there
(``torch.utils.checkpoint``, non-reentrant, with the RNG state of the forward, so dropout draws the same masks):
the activation memory of a step drops from all layers' to about one block's, for about one more forward.

The block's own forward is wrapped, not the block, so that parameter names (checkpoints) stay as they are; FSDP's
hooks, applied to the block after this, then gather the weights around the checkpointed forward and again before
its recomputation in the backward (the order torchtitan uses).
"""

from __future__ import annotations

import types

import torch
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(self, *args, **kwargs):
    forward = type(self).forward.__get__(self)  # the class's forward (FSDP adds hooks around it, not a forward)
    if not torch.is_grad_enabled():  # evaluation: nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Make every block of ``model`` (``model.layers()``) recompute its activations in the backward (in place; a
    deep copy of the model keeps the wrapping, bound to its own blocks)."""
    for block in model.layers():
        block.forward = types.MethodType(_checkpointed_forward, block)
