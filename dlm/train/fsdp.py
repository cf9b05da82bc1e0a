"""FSDP2 (``--set train.parallel=fsdp`` under torchrun): weights, gradients and optimiser state sharded over the
processes, and the checkpoints of a sharded run.

    torchrun --nproc_per_node=2 -m dlm.cli train --preset small --set train.parallel=fsdp --out runs/fsdp

``shard_model`` applies ``torch.distributed.fsdp.fully_shard`` to every transformer block (``model.layers()``), then
to the root (embeddings, final norm, head): each parameter becomes a DTensor split along dim 0 over a 1-D mesh of
all processes. A block's whole weights exist only during its forward and backward (all-gathered, then freed); its
gradients are reduce-scattered, so each process keeps, clips and updates 1/N of the weights, gradients and AdamW
moments. On CUDA with bf16 the gathered weights are bf16 and gradients are reduced in fp32 (``MixedPrecisionPolicy``);
the sharded master weights and the optimiser stay fp32. gloo (CPU) runs it too.

Checkpoints: ``save`` writes a sharded checkpoint during training (``dlm.train.sharded``: every process its own
rows, no gathering) and, at the end of training (``whole``), the usual whole files that ``dlm.load``, eval, sample
and export read (gathered one tensor at a time; process 0 holds them all). Both go through the crash-safe folder
protocol of ``dlm.train.checkpoint`` (manifest last, newest complete). ``load_weights`` and ``load_optimizer`` read
either form into a sharded model, each process only its rows; a checkpoint written by N processes resumes on M.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from dlm.config import RunConfig
from dlm.data.tokenizer import Tokenizer
from dlm.errors import DlmError
from dlm.train import checkpoint as ckpt
from dlm.train import sharded
from dlm.train.distributed import DistInfo, barrier


def shard_model(model: torch.nn.Module, info: DistInfo, precision: str) -> None:
    """``fully_shard`` each block, then the root, over all processes (in place)."""
    if not dist.is_initialized():
        raise DlmError(
            "train.parallel=fsdp shards the model over the processes of torchrun: launch with torchrun "
            "--nproc_per_node=N -m dlm.cli train ..."
        )
    mesh = init_device_mesh(info.device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()
    if info.device.type == "cuda" and precision == "bf16":  # bf16 all-gathers and compute, fp32 gradient reduction
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    for block in model.layers():
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def reshard(*models: torch.nn.Module | None) -> None:
    """Free the gathered weights a forward left (the root keeps its own after forward: FSDP2 expects a backward)."""
    for m in models:
        if isinstance(m, FSDPModule):
            m.reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a DTensor (a replicated one, e.g. the clipped grad norm: the whole); else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def _unique(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict's tensors (DTensors of an FSDP model), each once: a tied weight under the first of its
    names in sorted order, the name ``safetensors.torch.save_model`` keeps in a whole checkpoint."""
    named: dict[int, list[str]] = {}
    tensors = module.state_dict(keep_vars=True)
    for name, t in tensors.items():
        named.setdefault(id(t), []).append(name)
    keep = {min(names) for names in named.values()}
    return {name: t.detach() for name, t in tensors.items() if name in keep}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {f"state.{idx}.{key}": value for idx, state in sd["state"].items() for key, value in state.items()}
    return tensors, sd["param_groups"]


def _gathered(tensors: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """The whole tensors on process 0 (an all-gather per DTensor, every process in the same order); {} elsewhere."""
    whole = {}
    for name, t in tensors.items():
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if info.is_main:
            whole[name] = full.detach().contiguous().cpu()
    return whole


def save(
    run_dir: Path,
    info: DistInfo,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    tokenizer: Tokenizer,
    config: RunConfig,
    trainer_state: dict,
    whole: bool,
) -> None:
    """A checkpoint of a sharded run (every process calls it): sharded, or ``whole`` files (end of training)."""
    reshard(model, ema)
    pid = torch.tensor([os.getpid()], device=info.device)  # the temporary folder is named after process 0
    if dist.get_world_size() > 1:
        dist.broadcast(pid, src=0)
    tmp = run_dir / f"{ckpt.TMP_PREFIX}{int(pid.item())}"
    if info.is_main:
        ckpt.new_temporary(run_dir, int(pid.item()))
    barrier(info)
    groups = {"model": _unique(model), **({"ema": _unique(ema)} if ema is not None else {})}
    optimizer_tensors, param_groups = _optimizer_state(optimizer)
    if whole:
        for name, tensors in (*groups.items(), ("optimizer", optimizer_tensors)):
            gathered = _gathered(tensors, info)
            if info.is_main:
                save_file(gathered, str(tmp / f"{name}.safetensors"))
    else:
        sharded.write_shard(tmp, dist.get_rank(), dist.get_world_size(), {**groups, "optimizer": optimizer_tensors})
    barrier(info)  # every shard is on disk (fsynced) before process 0 completes the folder
    if info.is_main:
        ckpt.complete_checkpoint(
            run_dir, tmp, tokenizer=tokenizer, config=config, trainer_state=trainer_state, optimizer_groups=param_groups
        )


def _rows(t: torch.Tensor) -> tuple[int, int] | None:
    return sharded.local_rows(t) if isinstance(t, DTensor) else None


def _check_shape(path: Path, name: str, saved: list[int], expected: torch.Tensor) -> None:
    if saved != list(expected.shape):
        raise DlmError(
            f"{path}: tensor {name!r} has shape {saved}, the model expects {list(expected.shape)}; it does not match "
            "config.json: restore the checkpoint"
        )


def load_weights(model: torch.nn.Module, saved: Path, group: str = "model") -> None:
    """Load ``group`` of checkpoint ``saved`` (sharded or whole) into the sharded ``model``: each process reads its
    rows of each tensor, checked as ``checkpoint.check_tensor`` checks whole ones (shape, dtype kind, finite)."""
    source = sharded.Tensors(saved, group)
    params = model.state_dict(keep_vars=True)
    unexpected = [name for name in source.names() if name not in params]
    if unexpected:
        raise DlmError(f"{source.path} does not match config.json (unexpected tensors {unexpected[:3]})")
    names: dict[int, list[str]] = {}
    for name, p in params.items():
        names.setdefault(id(p), []).append(name)
    with torch.no_grad():
        for p_id, aliases in names.items():  # a tied weight once, from whichever of its names was saved
            name = next((n for n in sorted(aliases) if n in source), None)
            if name is None:
                raise DlmError(f"{source.path} does not match config.json (missing tensor {aliases[0]!r})")
            target = params[name]
            _check_shape(source.path, name, source.shapes[name], target)
            value = source.read(name, _rows(target))
            ckpt.check_tensor(source.path, name, value, local(target))
            local(target).copy_(value)


def load_optimizer(optimizer: torch.optim.Optimizer, saved: Path, param_groups: list[dict]) -> None:
    """The AdamW state of checkpoint ``saved`` (sharded or whole) for the sharded parameters: this process's rows."""
    source = sharded.Tensors(saved, "optimizer")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name in source.names():
        _, idx, key = name.split(".", 2)
        if not (idx.isdigit() and int(idx) < len(params)):
            raise DlmError(f"{source.path}: tensor {name!r} names no parameter of this model; restore the checkpoint")
        p = params[int(idx)]
        if key == "step":  # a scalar, the same on every process
            value = source.read(name)
            ckpt.check_tensor(source.path, name, value, value)
        else:  # a moment: the shape of its parameter, sharded like it
            _check_shape(source.path, name, source.shapes[name], p)
            value = source.read(name, _rows(p))
            ckpt.check_tensor(source.path, name, value, local(p))
            if isinstance(p, DTensor):
                value = DTensor.from_local(
                    value.to(p.device), p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
                )
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": ckpt.with_implementation(param_groups, optimizer)})
