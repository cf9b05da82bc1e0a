"""Checkpoints: a directory of safetensors + JSON, written atomically. Nothing is ever unpickled.

    RUN_DIR/checkpoint/
        model.safetensors        weights
        ema.safetensors          EMA weights (when training with --set train.ema=...)
        config.json              the full RunConfig
        tokenizer.json
        optimizer.safetensors    AdamW moments (training state)
        trainer_state.json       step, data position, RNG states, optimizer hyper-parameters

A new checkpoint is written to a temporary directory and renamed into place; the previous one is kept as
``.checkpoint.old`` until the rename is done, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from dlm.config import RunConfig
from dlm.data.tokenizer import Tokenizer, load_tokenizer
from dlm.errors import DlmError
from dlm.models.transformer import Transformer

CHECKPOINT = "checkpoint"


def existing_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory of a run directory (or a checkpoint directory itself), or None.

    ``.checkpoint.old`` counts too: it is the last complete checkpoint if a crash hit between the two renames."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT, path / ".checkpoint.old"):
        if (candidate / "model.safetensors").exists():
            return candidate
    return None


def find_checkpoint(path: str | Path) -> Path:
    """Like ``existing_checkpoint``, but a missing checkpoint is an error."""
    found = existing_checkpoint(path)
    if found is None:
        raise DlmError(f"no checkpoint found in {path}; train one first: dlm train --out {path}")
    return found


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
    tensors = _load_tensors(ckpt / "optimizer.safetensors")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    # the saved hyper-parameters, but this machine's implementation (fused on CUDA, foreach elsewhere)
    impl = ("foreach", "fused")
    param_groups = [
        {**saved, **{k: now[k] for k in impl if k in now}} for saved, now in zip(param_groups, optimizer.param_groups)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


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
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".checkpoint.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    if ema_model is not None:
        save_model(ema_model, str(tmp / "ema.safetensors"))
    for name, tensors in (extra_tensors or {}).items():
        save_file(tensors, str(tmp / name))
    (tmp / "config.json").write_text(config.to_json())
    tokenizer.save(tmp / "tokenizer.json")
    if optimizer is not None:
        tensors, groups = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        trainer_state = {**(trainer_state or {}), "optimizer_param_groups": groups}
    if trainer_state is not None:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    for f in tmp.iterdir():  # make the new files durable before they replace the old ones
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    final, old = run_dir / CHECKPOINT, run_dir / ".checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise DlmError(f"{path} is missing; the checkpoint is incomplete: re-train or restore it")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DlmError(f"{path} is corrupt or truncated ({e}); re-train or restore the checkpoint") from None


def load_config(ckpt: Path) -> RunConfig:
    try:
        return RunConfig.from_dict(json.loads((ckpt / "config.json").read_text()))
    except FileNotFoundError:
        raise DlmError(f"{ckpt / 'config.json'} is missing; the checkpoint is incomplete") from None
    except json.JSONDecodeError as e:
        raise DlmError(f"{ckpt / 'config.json'} is not valid JSON ({e}); restore the checkpoint") from None


def load_weights(model: Transformer, path: Path) -> None:
    if not path.exists():
        raise DlmError(f"{path} is missing; the checkpoint is incomplete: re-train or restore it")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, ValueError) as e:
        raise DlmError(f"{path} is corrupt or truncated ({e}); re-train or restore the checkpoint") from None
    except RuntimeError as e:  # shapes that do not fit the model built from config.json
        raise DlmError(f"{path} does not match config.json ({str(e).splitlines()[0]})") from None
    if missing or unexpected:
        raise DlmError(f"{path} does not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")


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
    load_weights(model, ema if use_ema and ema.exists() else ckpt / "model.safetensors")
    return model.to(device).eval(), tokenizer, config
