"""Experiment tracking beside ``metrics.jsonl``: ``dlm train --log tensorboard --log wandb``.

Each tracker gets every record that metrics.jsonl gets (the training metrics at log steps, the validation bound at
evaluations), keyed by the same names, at the same step, and the run config, flattened to ``model.d_model`` style
keys, as its hyperparameters. Both are optional extras (``pip install "dlm[tensorboard]"`` / ``"dlm[wandb]"``),
imported only when asked for.

- ``tensorboard``: event files in ``OUT/tensorboard`` (``tensorboard --logdir OUT/tensorboard``), through
  ``torch.utils.tensorboard``; a resumed run drops the events logged after its checkpoint (``purge_step``).
- ``wandb``: offline unless the user configured W&B (``WANDB_MODE`` or ``WANDB_API_KEY`` set): the run is written
  under ``OUT/wandb`` and ``wandb sync OUT/wandb/offline-run-*`` uploads it later. A resumed run continues the same
  W&B run (its id is kept in ``OUT/wandb-run-id``). Project: ``$WANDB_PROJECT``, else ``dlm``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
from pathlib import Path

from dlm.errors import DlmError

TRACKERS = ("tensorboard", "wandb")


def parse_trackers(spec: str) -> list[str]:
    """``train.log`` ("tensorboard,wandb", "" = none) -> the names, each checked."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    for name in names:
        if name not in TRACKERS:
            raise DlmError(f"unknown tracker {name!r} in train.log; choose from: {', '.join(TRACKERS)}")
    return names


def flat_config(config) -> dict:
    """The run config as {"model.d_model": 512, ...}: scalars only (what trackers take as hyperparameters)."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                walk(f"{prefix}{field.name}.", getattr(value, field.name))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            flat[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", config)
    return flat


def _scalars(record: dict) -> dict:
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoard:
    def __init__(self, out_dir: Path, config: dict, resume_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as e:
            raise DlmError('--log tensorboard needs the tensorboard package: pip install "dlm[tensorboard]"') from e
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)
        if resume_step is None:  # the hyperparameters once, in the run's own event file
            for summary in hparams(config, {"val_nats_per_token": 0.0, "loss": 0.0}):
                self.writer.file_writer.add_summary(summary)

    def write(self, record: dict) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()  # log steps are rare: a crash loses nothing that metrics.jsonl has

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out_dir: Path, config: dict, resume_step: int | None):
        try:
            import wandb
        except ImportError as e:
            raise DlmError('--log wandb needs the wandb package: pip install "dlm[wandb]"') from e
        configured = os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")
        id_file = out_dir / "wandb-run-id"
        run_id = id_file.read_text().strip() if resume_step is not None and id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "dlm"),
            name=out_dir.name,
            id=run_id,
            resume="allow",
            dir=str(out_dir),
            config=config,
            mode=None if configured else "offline",
            reinit="finish_previous",
        )

    def write(self, record: dict) -> None:
        self.run.log(_scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


def open_trackers(names: list[str], out_dir: Path, config, resume_step: int | None) -> list:
    """The trackers of ``names`` for a run in ``out_dir`` (rank 0 only); ``resume_step``: the checkpoint's step
    when resuming, else None."""
    flat = flat_config(config) if names else {}
    kinds = {"tensorboard": TensorBoard, "wandb": WandB}
    return [kinds[name](out_dir, flat, resume_step) for name in names]
