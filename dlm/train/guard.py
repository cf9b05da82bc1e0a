"""Training guards: a non-finite loss or gradient never reaches a checkpoint.

Each step folds ``isfinite(loss) & isfinite(grad_norm)`` into a tensor on the device (no host sync); the loop reads
it where it syncs anyway, at log steps and before every validation and save, and stops the run with a one-line
error. A save also checks that the weights themselves are finite (a finite step with an infinite learning rate
breaks them). ``train.nonfinite=skip`` skips such steps instead (no optimiser step) and counts them, at the price
of one host sync per step; a log window whose every step was skipped still stops the run.
"""

from __future__ import annotations

import torch

from dlm.errors import DlmError
from dlm.train.distributed import DistInfo, all_reduce_max
from dlm.train.sharded import is_dtensor

MODES = ("stop", "skip")


class NonFiniteGuard:
    def __init__(self, mode: str, info: DistInfo, skipped: int = 0):
        self.mode, self.info, self.skipped = mode, info, skipped
        self.first_bad = torch.zeros((), dtype=torch.long, device=info.device)  # the first non-finite step; 0: none

    def take_step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Record ``step``; whether to apply its update (always in stop mode, where nothing waits for the device)."""
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.mode == "skip":
            if not all_reduce_max((~finite).float(), self.info):  # the host sync of skip mode; DDP: all ranks skip
                return True
            self.skipped += 1
            return False
        self.first_bad = torch.where((self.first_bad == 0) & ~finite, step, self.first_bad)
        return True

    def check(self, where: str, *, window_steps: int = 0, window_taken: int = 1) -> None:
        """Stop with a one-line error if a step went non-finite (every rank alike); ``where`` says what is saved."""
        bad = int(all_reduce_max(self.first_bad.clone(), self.info).item())
        if bad:
            raise DlmError(
                f"the loss or the gradients became NaN or infinite at step {bad}; stopped before saving ({where}). "
                "Lower the learning rate, check the data, or skip such steps with --set train.nonfinite=skip"
            )
        if window_steps and not window_taken:
            raise DlmError(
                f"every one of the last {window_steps} steps had a NaN or infinite loss or gradient and was skipped; "
                f"stopped ({where}). Lower the learning rate or check the data"
            )

    def check_weights(self, where: str, *models: torch.nn.Module | None) -> None:
        """Before a save: a one-line error naming the first parameter that is not finite."""
        params = [(name, p) for m in models if m is not None for name, p in m.named_parameters()]
        # FSDP: each process checks its shard of each parameter, and they agree on the verdict (DDP: the ranks
        # hold the same weights and agree without one)
        local = [p.to_local() if is_dtensor(p) else p for _, p in params]
        bad = torch.stack([~torch.isfinite(p).all() for p in local]).float()  # (P,)
        if any(is_dtensor(p) for _, p in params):
            bad = all_reduce_max(bad, self.info)
        if bool(bad.any()):
            name = params[int(bad.nonzero()[0])][0]
            raise DlmError(
                f"the weights became NaN or infinite (first: {name}); stopped before saving them ({where}). "
                "Lower the learning rate"
            )
