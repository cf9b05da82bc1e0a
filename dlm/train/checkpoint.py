"""Checkpoints: a directory of safetensors + JSON, written atomically. Nothing is ever unpickled.

    RUN_DIR/checkpoint/
        model.safetensors        weights
        ema.safetensors          EMA weights (when training with --set train.ema=...)
        config.json              the full RunConfig
        tokenizer.json
        optimizer.safetensors    AdamW moments (training state)
        trainer_state.json       step, data position, RNG states, optimizer hyper-parameters
        manifest.json            written last: the step and each file's size (complete when they match)

An FSDP run (``train.parallel=fsdp``) writes the weights, EMA and optimizer state as one shard file per process
instead (``dlm.train.sharded``) and the whole files at the end of training; every reader here takes either form.

A new checkpoint is written to ``.checkpoint.tmp-<pid>``, made durable (fsync) and completed by its manifest; only
then does the previous one move to ``.checkpoint.old`` and the new one to ``checkpoint/``. A folder is deleted by
renaming it to ``.checkpoint.trash-<pid>`` first, so a deletion cut short leaves nothing that looks complete.
Whatever a crash (or two in a row) interrupts, a complete checkpoint of the newest step is on disk:
``newest_complete`` finds it under any of the three names, and ``recover`` (run by the next training run under its
run lock, so every temporary folder is a dead run's) makes it ``checkpoint/`` and deletes the rest.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model

from dlm.config import RunConfig
from dlm.data.tokenizer import Tokenizer, load_tokenizer
from dlm.errors import DlmError
from dlm.models.transformer import Transformer
from dlm.train import sharded

CHECKPOINT, OLD, TMP_PREFIX, TRASH_PREFIX = "checkpoint", ".checkpoint.old", ".checkpoint.tmp-", ".checkpoint.trash-"
MANIFEST = "manifest.json"


def _manifest(ckpt: Path) -> dict | None:
    """The manifest of a complete checkpoint (it parses and every file it lists has its size), else None."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files, step = manifest["files"], manifest["step"]
        weights = "model.safetensors" in files or any(sharded.SHARD_PATTERN.fullmatch(name) for name in files)
        if not weights or not (step is None or isinstance(step, int)):
            return None
        if all((ckpt / name).stat().st_size == size for name, size in files.items()):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def is_complete(ckpt: Path) -> bool:
    """A valid manifest; or, for a checkpoint of a dlm that wrote none, ``checkpoint/`` or ``.checkpoint.old`` with
    weights (that dlm only ever renamed whole checkpoints to those names)."""
    if (ckpt / MANIFEST).exists():
        return _manifest(ckpt) is not None
    return ckpt.name in (CHECKPOINT, OLD) and (ckpt / "model.safetensors").is_file()


def checkpoint_step(ckpt: Path) -> int:
    """The training step a complete checkpoint holds (-1: unknown, e.g. a checkpoint without trainer state)."""
    manifest = _manifest(ckpt)
    step = manifest["step"] if manifest else None
    if step is None:
        try:
            step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError):
            step = None
    return step if isinstance(step, int) else -1


def _candidates(run_dir: Path) -> list[Path]:
    """The checkpoint folders of a run directory, in order of preference at equal steps."""
    tmps = sorted(run_dir.glob(TMP_PREFIX + "*")) if run_dir.is_dir() else []
    return [p for p in (run_dir / CHECKPOINT, run_dir / OLD, *tmps) if p.is_dir()]


def newest_complete(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of the highest step in a run directory (``checkpoint/``, ``.checkpoint.old`` or a
    temporary folder a crash left behind), or None."""
    complete = [p for p in _candidates(Path(run_dir)) if is_complete(p)]
    return max(complete, key=checkpoint_step, default=None)  # max keeps the first of equal steps


def existing_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint to read in a run directory (or a checkpoint directory itself), or None: the newest complete
    one; failing that a damaged ``checkpoint/`` or ``.checkpoint.old``, so that loading it says what is wrong."""
    path = Path(path)
    if _has_weights(path):
        return path
    found = newest_complete(path)
    if found is None:
        found = next((p for p in (path / CHECKPOINT, path / OLD) if _has_weights(p)), None)
    return found


def _has_weights(ckpt: Path) -> bool:
    return (ckpt / "model.safetensors").exists() or sharded.is_sharded(ckpt)


def find_checkpoint(path: str | Path) -> Path:
    """Like ``existing_checkpoint``, but a missing checkpoint is an error."""
    found = existing_checkpoint(path)
    if found is None:
        raise DlmError(f"no checkpoint found in {path}; train one first: dlm train --out {path}")
    return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint folder: renamed out of the way first (atomic), then removed."""
    if ckpt.exists():
        trash = ckpt.with_name(f"{TRASH_PREFIX}{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        ckpt.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


def _promote(run_dir: Path, src: Path) -> Path:
    """Make the complete checkpoint ``src`` the run's ``checkpoint/``; at every point some folder holds it whole."""
    final, old = run_dir / CHECKPOINT, run_dir / OLD
    if src != final:
        if src == old:
            remove_checkpoint(final)  # an incomplete or older one: old is the best there is
        elif final.exists():
            remove_checkpoint(old)
            final.rename(old)
        src.rename(final)
        _fsync_dir(run_dir)
    remove_checkpoint(old)
    return final


def recover(run_dir: str | Path) -> Path | None:
    """Under the run lock: make the newest complete checkpoint ``checkpoint/`` and delete ``.checkpoint.old`` and
    the temporary folders of dead runs; return ``checkpoint/``, or None when nothing is complete (then only the
    temporary folders go)."""
    run_dir = Path(run_dir)
    best = newest_complete(run_dir)
    final = _promote(run_dir, best) if best is not None else None
    _remove_debris(run_dir)
    return final


def consolidate(run_dir: str | Path) -> Path:
    """Make the newest complete checkpoint of ``run_dir`` whole (one process; what an FSDP run writes at the end of
    training): its shards' tensors become ``model.safetensors`` etc., crash-safely; return the checkpoint. Run it on
    a run no trainer is writing (--resume resumes either form: this is for tools that read whole files)."""
    run_dir = Path(run_dir)
    found = find_checkpoint(run_dir)
    if not sharded.is_sharded(found):
        return found
    tmp = new_temporary(run_dir)
    for group in ("model", "ema", "optimizer"):
        if sharded.has_group(found, group):
            save_file(sharded.Tensors(found, group).read_all(), str(tmp / f"{group}.safetensors"))
    for name in ("config.json", "tokenizer.json", "trainer_state.json"):
        if (found / name).exists():
            shutil.copyfile(found / name, tmp / name)
    write_manifest(tmp, checkpoint_step(found) if checkpoint_step(found) >= 0 else None)
    return _promote(run_dir, tmp)


def clear(run_dir: str | Path) -> None:
    """Delete every checkpoint folder of a run directory (a new run there, e.g. --overwrite)."""
    for p in _candidates(Path(run_dir)):
        remove_checkpoint(p)
    _remove_debris(Path(run_dir))


def _remove_debris(run_dir: Path) -> None:
    for p in [*run_dir.glob(TMP_PREFIX + "*"), *run_dir.glob(TRASH_PREFIX + "*")]:
        shutil.rmtree(p, ignore_errors=True)


def load_trainer_state(ckpt: Path) -> dict:
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        state["step"], state["data"], state["optimizer_param_groups"]  # noqa: B018 (required keys)
        return state
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        raise DlmError(
            f"{ckpt} has no usable trainer_state.json ({e}); it can be loaded for eval and sampling "
            "but not resumed: train a new run with --overwrite"
        ) from None


def rng_to_str(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def rng_from_str(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {
        f"state.{idx}.{key}": value.detach().contiguous()
        for idx, state in sd["state"].items()
        for key, value in state.items()
    }
    return tensors, sd["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Path, param_groups: list[dict]) -> None:
    path = ckpt / "optimizer.safetensors"
    tensors = _load_tensors(path)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        if not (idx.isdigit() and int(idx) < len(params)):
            raise DlmError(f"{path}: tensor {name!r} names no parameter of this model; restore the checkpoint")
        expected = value if key == "step" else params[int(idx)]  # the moments have their parameter's shape
        check_tensor(path, name, value, expected)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": with_implementation(param_groups, optimizer)})


def with_implementation(param_groups: list[dict], optimizer: torch.optim.Optimizer) -> list[dict]:
    """The saved hyper-parameters, but this machine's implementation (fused on CUDA, foreach elsewhere)."""
    impl = ("foreach", "fused")
    now = optimizer.param_groups
    return [{**saved, **{k: group[k] for k in impl if k in group}} for saved, group in zip(param_groups, now)]


def check_tensor(path: Path, name: str, value: torch.Tensor, expected: torch.Tensor) -> None:
    """A one-line error naming the tensor unless it has the expected shape, a dtype of the same kind (floating
    point for floating point, else the same dtype) and only finite values."""
    if value.shape != expected.shape:
        raise DlmError(
            f"{path}: tensor {name!r} has shape {list(value.shape)}, the model expects {list(expected.shape)}; "
            "it does not match config.json: restore the checkpoint"
        )
    same_kind = value.dtype.is_floating_point if expected.dtype.is_floating_point else value.dtype == expected.dtype
    if not same_kind:
        raise DlmError(
            f"{path}: tensor {name!r} is {str(value.dtype).removeprefix('torch.')}, the model expects "
            f"{str(expected.dtype).removeprefix('torch.')}; restore the checkpoint"
        )
    if value.dtype.is_floating_point and not torch.isfinite(value).all():
        raise DlmError(
            f"{path}: tensor {name!r} holds NaN or infinite values (a diverged run?); restore or re-train the "
            "checkpoint"
        )


def save_checkpoint(
    run_dir: str | Path,
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    config: RunConfig,
    optimizer: torch.optim.Optimizer | None = None,
    trainer_state: dict | None = None,
    ema_model: Transformer | None = None,
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the checkpoint atomically; ``extra_tensors``: more safetensors files, by file name (LoRA's adapters)."""
    run_dir = Path(run_dir)
    tmp = new_temporary(run_dir)
    save_model(model, str(tmp / "model.safetensors"))
    if ema_model is not None:
        save_model(ema_model, str(tmp / "ema.safetensors"))
    for name, tensors in (extra_tensors or {}).items():
        save_file(tensors, str(tmp / name))
    groups = None
    if optimizer is not None:
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    return complete_checkpoint(run_dir, tmp, tokenizer=tokenizer, config=config, trainer_state=trainer_state,
                               optimizer_groups=groups)  # fmt: skip


def new_temporary(run_dir: Path, pid: int | None = None) -> Path:
    """An empty ``.checkpoint.tmp-<pid>`` (this process's pid unless told) for a new checkpoint's files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f"{TMP_PREFIX}{os.getpid() if pid is None else pid}"
    remove_checkpoint(tmp)
    tmp.mkdir()
    return tmp


def complete_checkpoint(
    run_dir: Path,
    tmp: Path,
    *,
    tokenizer: Tokenizer,
    config: RunConfig,
    trainer_state: dict | None,
    optimizer_groups: list[dict] | None = None,
) -> Path:
    """Add the JSON files to ``tmp`` (which holds the tensors), its manifest last, and make it ``checkpoint/``."""
    (tmp / "config.json").write_text(config.to_json())
    tokenizer.save(tmp / "tokenizer.json")
    if optimizer_groups is not None:
        trainer_state = {**(trainer_state or {}), "optimizer_param_groups": optimizer_groups}
    if trainer_state is not None:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    write_manifest(tmp, (trainer_state or {}).get("step"))
    return _promote(run_dir, tmp)


def write_manifest(ckpt: Path, step: int | None) -> None:
    """Make the files of ``ckpt`` durable, then declare them complete: ``manifest.json``, the last file written."""
    (ckpt / MANIFEST).unlink(missing_ok=True)
    files = {f.name: f.stat().st_size for f in ckpt.iterdir()}
    for f in ckpt.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    with open(ckpt / MANIFEST, "w") as handle:
        handle.write(json.dumps({"step": step, "files": files}, indent=1))
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(ckpt)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``; in a sharded checkpoint, those of its group (``model`` etc.), assembled whole."""
    if not path.exists() and sharded.is_sharded(path.parent) and sharded.has_group(path.parent, path.stem):
        return sharded.Tensors(path.parent, path.stem).read_all()
    if not path.exists():
        raise DlmError(f"{path} is missing; the checkpoint is incomplete: re-train or restore it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DlmError(f"{path} is corrupt or truncated ({e}); re-train or restore the checkpoint") from None


def load_config(ckpt: Path) -> RunConfig:
    """The checkpoint's config.json, validated; an error names the file."""
    try:
        return RunConfig.from_dict(json.loads((ckpt / "config.json").read_text())).validate()
    except FileNotFoundError:
        raise DlmError(f"{ckpt / 'config.json'} is missing; the checkpoint is incomplete") from None
    except json.JSONDecodeError as e:
        raise DlmError(f"{ckpt / 'config.json'} is not valid JSON ({e}); restore the checkpoint") from None
    except DlmError as e:
        raise DlmError(f"{ckpt / 'config.json'}: {e}") from None


def load_weights(model: Transformer, path: Path) -> None:
    """Load ``path`` into ``model`` after checking every tensor (``check_tensor``); tied weights are stored once."""
    tensors = _load_tensors(path)
    expected = model.state_dict()
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        raise DlmError(f"{path} does not match config.json (unexpected tensors {unexpected[:3]})")
    for name, value in tensors.items():
        check_tensor(path, name, value, expected[name])
    loaded = {expected[name].data_ptr() for name in tensors}  # a tied weight is loaded with its twin
    missing = [name for name, t in expected.items() if name not in tensors and t.data_ptr() not in loaded]
    if missing:
        raise DlmError(f"{path} does not match config.json (missing tensors {missing[:3]})")
    model.load_state_dict(tensors, strict=False)


def load(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu"):
    """Load a trained model: ``(model, tokenizer, config)``; the EMA weights when present and ``use_ema``."""
    ckpt = find_checkpoint(path)
    config = load_config(ckpt).validate()
    tokenizer = load_tokenizer(ckpt / "tokenizer.json")
    if tokenizer.vocab_size > config.model.vocab_size or (
        not tokenizer.is_foreign and tokenizer.vocab_size != config.model.vocab_size
    ):
        raise DlmError(
            f"tokenizer.json has {tokenizer.vocab_size} tokens but the model has {config.model.vocab_size}; "
            "use the tokenizer saved with this checkpoint"
        )
    model = Transformer(config.model)
    ema = ckpt / "ema.safetensors"
    load_weights(model, ema if use_ema and sharded.has_group(ckpt, "ema") else ckpt / "model.safetensors")
    return model.to(device).eval(), tokenizer, config
