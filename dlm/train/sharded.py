"""Sharded checkpoints (FSDP2 runs): one safetensors file per process with its rows of every tensor, and JSON that
says where they lie. Nothing is ever unpickled.

    RUN_DIR/checkpoint/
        shard-00000-of-00002.safetensors   process 0's rows: "model/<name>", "ema/<name>", "optimizer/state.<i>.<key>"
        shard-00001-of-00002.safetensors   process 1's rows
        config.json, tokenizer.json, trainer_state.json, manifest.json   as in a whole checkpoint (dlm.train.checkpoint)

FSDP2 splits each tensor along dim 0 into contiguous blocks of rows, one per process (``torch.chunk``'s sizes). The
header of each shard file (safetensors metadata, key ``dlm.shards``) holds JSON with, per tensor, its full shape and
the first row the file holds (``null``: the whole tensor, replicated, e.g. AdamW's step count, kept by process 0).
``ShardedTensors`` reads any rows of any tensor from the files that hold them, so a checkpoint written by N processes
resumes on M, in FSDP (each process reads its rows only) or DDP and ``dlm.load`` (whole tensors).

``Tensors`` gives the same access to a whole checkpoint's ``model.safetensors`` (etc.), so loaders take either.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from dlm.errors import DlmError

SHARD_PATTERN = re.compile(r"shard-(\d{5})-of-(\d{5})\.safetensors")
PLACEMENT_KEY = "dlm.shards"


def is_dtensor(t) -> bool:
    """Whether ``t`` is a DTensor, without importing torch.distributed.tensor (seconds) where none can exist."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}.safetensors"


def shard_files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.glob("shard-*-of-*.safetensors") if SHARD_PATTERN.fullmatch(p.name))


def is_sharded(ckpt: Path) -> bool:
    """Whether ``ckpt`` is a sharded checkpoint (shard files, no ``model.safetensors``)."""
    return not (ckpt / "model.safetensors").exists() and bool(shard_files(ckpt))


def local_rows(t) -> tuple[int, int]:
    """The rows [start, stop) of dim 0 that this process holds of an FSDP2 DTensor (``Shard(0)`` on a 1-D mesh)."""
    from torch.distributed.tensor import Shard

    if t.device_mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
        raise ValueError(f"expected a DTensor sharded on dim 0 over a 1-D mesh, got {t.placements}")
    n, world, rank = t.shape[0], t.device_mesh.size(), t.device_mesh.get_local_rank()
    size = -(-n // world)  # torch.chunk's block size: the last blocks may be shorter or empty
    start = min(rank * size, n)
    stop = min(start + size, n)
    if t.to_local().shape[0] != stop - start:
        raise ValueError(f"rank {rank} holds {t.to_local().shape[0]} rows of {n}, expected {stop - start}")
    return start, stop


def write_shard(ckpt: Path, rank: int, world_size: int, groups: dict[str, dict[str, torch.Tensor]]) -> Path:
    """This process's shard file in ``ckpt``: its rows of every DTensor of ``groups`` (group -> name -> tensor),
    and the plain (replicated) tensors if it is process 0; made durable (fsync)."""
    tensors, placement = {}, {}
    for group, named in groups.items():
        for name, t in named.items():
            key = f"{group}/{name}"
            if is_dtensor(t):
                tensors[key] = t.to_local().detach().contiguous().cpu()
                placement[key] = {"shape": list(t.shape), "row": local_rows(t)[0]}
            elif rank == 0:
                tensors[key] = t.detach().contiguous().cpu()
                placement[key] = {"shape": list(t.shape), "row": None}
    path = ckpt / shard_name(rank, world_size)
    save_file(tensors, str(path), metadata={PLACEMENT_KEY: json.dumps(placement)})
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return path


class Tensors:
    """The tensors of one group (``model``, ``ema``, ``optimizer``) of a checkpoint, sharded or whole: names, full
    shapes, and any block of rows of a tensor, read from disk only when asked. ``path`` is the name errors give."""

    def __init__(self, ckpt: Path, group: str):
        self.path = ckpt / f"{group}.safetensors"
        self.pieces: dict[str, list[tuple[Path, str, int | None, int]]] = {}  # name -> [(file, key, row, rows)]
        self.shapes: dict[str, list[int]] = {}
        try:
            if self.path.exists():
                with safe_open(str(self.path), framework="pt") as f:
                    for key in f.keys():
                        shape = f.get_slice(key).get_shape()
                        self._add(key, self.path, key, None, shape, shape)
            else:
                for file in self._complete_shards(ckpt):
                    with safe_open(str(file), framework="pt") as f:
                        placement = json.loads((f.metadata() or {})[PLACEMENT_KEY])
                        for key in f.keys():
                            if key.startswith(group + "/"):
                                where = placement[key]
                                local = f.get_slice(key).get_shape()
                                self._add(key[len(group) + 1 :], file, key, where["row"], where["shape"], local)
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise DlmError(f"{ckpt}: the {group} tensors are corrupt or truncated ({e}); restore it") from None

    @staticmethod
    def _complete_shards(ckpt: Path) -> list[Path]:
        files = shard_files(ckpt)
        worlds = {int(SHARD_PATTERN.fullmatch(f.name).group(2)) for f in files}
        if len(worlds) != 1 or len(files) != next(iter(worlds)):
            raise ValueError(f"expected one shard per process, found {[f.name for f in files]}")
        return files

    def _add(self, name, file, key, row, shape, local) -> None:
        if name in self.shapes and list(shape) != self.shapes[name]:
            raise ValueError(f"the shards disagree on the shape of {name}")
        self.shapes[name] = list(shape)
        self.pieces.setdefault(name, []).append((file, key, row, local[0] if local else 0))

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def names(self) -> list[str]:
        return list(self.shapes)

    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``name``, whole or its rows [start, stop) of dim 0, assembled from the files that hold them."""
        pieces = self.pieces[name]
        if rows is None and not self.shapes[name]:  # a scalar
            file, key, _, _ = pieces[0]
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(key)
        start, stop = rows if rows is not None else (0, self.shapes[name][0])
        if start == stop:  # no rows (a process whose block of a short tensor is empty)
            file, key, _, _ = pieces[0]
            with safe_open(str(file), framework="pt") as f:
                return f.get_slice(key)[0:0]
        parts = []
        for file, key, row, count in sorted(pieces, key=lambda piece: piece[2] or 0):
            first = 0 if row is None else row  # a whole (replicated) tensor is one piece from row 0
            lo, hi = max(start, first), min(stop, first + count)
            if lo < hi:
                with safe_open(str(file), framework="pt") as f:
                    parts.append(f.get_slice(key)[lo - first : hi - first])
        held = sum(p.shape[0] for p in parts)
        if held != stop - start:
            raise DlmError(f"{self.path}: the shards hold {held} of rows {start}:{stop} of {name!r}; restore it")
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def read_all(self) -> dict[str, torch.Tensor]:
        return {name: self.read(name) for name in self.names()}


def has_group(ckpt: Path, group: str) -> bool:
    """Whether checkpoint ``ckpt`` holds tensors of ``group`` (``ema``, ...), whole or sharded."""
    if (ckpt / f"{group}.safetensors").exists():
        return True
    if not is_sharded(ckpt):
        return False
    return bool(Tensors(ckpt, group).names())
