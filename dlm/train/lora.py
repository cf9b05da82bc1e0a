"""LoRA: low-rank adapters on the attention and MLP projections (``--lora R``, for ``dlm train --init`` and
``dlm sft``).

Every ``nn.Linear`` inside a block's attention and MLP (``qkv``/``out`` and ``mlp.0``/``mlp.2`` in the dlm layout;
``q/k/v/o_proj`` and ``gate/up/down_proj`` in the Llama one) computes

    y = W x + b + (alpha / R) * B A x,    A: [R, in] (Kaiming-uniform), B: [out, R] (zeros, so training starts at W)

and only A and B train: the model's own parameters are frozen. The adapters are kept outside the model (forward
hooks on its projections), so the model stays a plain ``Transformer``.

Checkpoints are **merged**: ``model.safetensors`` holds W + (alpha / R) B A, a plain checkpoint of the base
model's shape that every reader (``dlm.load``, ``dlm export``, ``dlm serve``) takes as it is, and
``adapter.safetensors`` beside it holds A and B, which ``--resume`` loads on top of the frozen base (the run's
``train.init``, re-read from its source) to continue exactly.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlm.errors import DlmError

ADAPTER_FILE = "adapter.safetensors"


def load_adapter(checkpoint) -> dict[str, torch.Tensor]:
    """The adapters' tensors of a checkpoint directory (``adapter.safetensors``)."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(checkpoint) / ADAPTER_FILE
    if not path.exists():
        raise DlmError(f"{path} is missing: a LoRA run resumes from its adapters; restore it or train anew")
    return load_file(str(path))


def lora_targets(model: nn.Module) -> dict[str, nn.Linear]:
    """The projections that take adapters: the linear layers of every block's attention and MLP, by name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and {"attn", "mlp"} & set(name.split("."))
    }


class LoRA(nn.Module):
    """Adapters of rank ``rank`` on ``model``'s projections (``alpha``: the scale's numerator, default ``rank``, a
    scale of 1); freezes the model. ``parameters()`` are the adapters only: give them to the optimiser."""

    def __init__(self, model: nn.Module, rank: int, alpha: float = 0.0, seed: int = 0):
        super().__init__()
        if rank <= 0:
            raise DlmError(f"the LoRA rank must be positive, got {rank}")
        targets = lora_targets(model)
        if not targets:
            raise DlmError("the model has no attention or MLP projections to adapt")
        self.rank, self.scale = rank, (alpha or rank) / rank
        self.enabled = True
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        generator = torch.Generator().manual_seed(seed)
        self._targets: dict[str, nn.Linear] = {}
        for name, linear in targets.items():
            key = name.replace(".", "__")  # ParameterDict keys cannot hold dots
            bound = 1.0 / math.sqrt(linear.in_features)  # nn.Linear's (and PEFT's) Kaiming-uniform bound
            a = (torch.rand(rank, linear.in_features, generator=generator) * 2 - 1) * bound
            device = linear.weight.device
            self.A[key] = nn.Parameter(a.to(device))
            self.B[key] = nn.Parameter(torch.zeros(linear.out_features, rank, device=device))
            self._targets[key] = linear
        model.requires_grad_(False)
        self._model = [model]  # a reference, not a submodule: parameters() are the adapters only
        self._handles = [linear.register_forward_hook(self._hook(key)) for key, linear in self._targets.items()]

    def _hook(self, key: str):
        def add_adapter(module, inputs, output):
            if not self.enabled:
                return output
            x = inputs[0]
            a, b = self.A[key].to(x.dtype), self.B[key].to(x.dtype)
            return output + self.scale * F.linear(F.linear(x, a), b)  # (..., out)

        return add_adapter

    def delta(self, key: str) -> torch.Tensor:
        """(alpha / R) B A: what the adapter adds to the weight [out, in]."""
        return self.scale * (self.B[key] @ self.A[key])

    @contextmanager
    def merged(self):
        """Inside: the model's weights are W + (alpha / R) B A and the hooks are off (the model alone computes the
        adapted model: what checkpoints save); on exit the base weights are restored bit for bit."""
        saved = {key: linear.weight.detach().clone() for key, linear in self._targets.items()}
        try:
            with torch.no_grad():
                for key, linear in self._targets.items():
                    linear.weight.add_(self.delta(key).to(linear.weight.dtype))
            self.enabled = False
            yield
        finally:
            self.enabled = True
            with torch.no_grad():
                for key, linear in self._targets.items():
                    linear.weight.copy_(saved[key])

    def merged_model(self) -> nn.Module:
        """A new plain model (no hooks) of the adapted weights W + (alpha / R) B A: what checkpoints save."""
        model = self._model[0]
        with self.merged():
            state = {k: v.clone() for k, v in model.state_dict().items()}
        plain = type(model)(model.config).to(next(model.parameters()).device)
        plain.load_state_dict(state)
        return plain.eval()

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """A and B by name (``A.blocks__0__attn__qkv``, ...), for ``adapter.safetensors``."""
        return {name: p.detach().contiguous() for name, p in self.named_parameters()}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        if set(tensors) != set(own):
            raise DlmError(
                f"{ADAPTER_FILE} does not fit this model's adapters (rank {self.rank}); resume with the run's own "
                "train.lora_rank"
            )
        with torch.no_grad():
            for name, value in tensors.items():
                if value.shape != own[name].shape:
                    raise DlmError(
                        f"{ADAPTER_FILE}: {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}"
                    )
                own[name].copy_(value)

    def remove(self) -> None:
        """Detach the adapters from the model (its weights are the base ones again)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
