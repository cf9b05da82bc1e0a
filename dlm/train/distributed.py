"""torchrun support: the same command runs on one process or under ``torchrun --nproc_per_node=N`` (DDP, or FSDP2
with ``--set train.parallel=fsdp``: dlm.train.fsdp).

The backend is nccl on CUDA and gloo on CPU. Rank 0 logs and writes checkpoints (FSDP: every rank writes its shard).
A process group that the caller initialised before is used as it is and left to the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup_distributed initialised the process group (teardown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None, *, group: bool = False) -> DistInfo:
    """Initialise the process group when launched by torchrun with several processes (or one, with ``group``:
    FSDP); pick the device (CUDA when available)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device(device or "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = (world_size > 1 or (group and "LOCAL_RANK" in os.environ)) and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
