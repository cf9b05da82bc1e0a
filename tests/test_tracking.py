"""--log tensorboard / wandb: the trackers get metrics.jsonl's records at the same steps and the run config as
hyperparameters; W&B runs offline unless configured and a resumed run continues the same W&B run."""

import json

import pytest

from dlm.errors import DlmError
from dlm.presets import preset_config
from dlm.train.loop import train
from dlm.train.tracking import flat_config, parse_trackers


def config(steps: int, log: str):
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.max_steps, cfg.train.precision = "mdlm", steps, "fp32"
    cfg.train.log_every, cfg.train.eval_sequences, cfg.train.log = 2, 4, log
    return cfg


def test_tensorboard_and_wandb_log_what_metrics_jsonl_logs(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    train(config(4, "tensorboard,wandb"), out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    for key in ("loss", "val_nats_per_token", "lr"):
        logged = {r["step"]: r[key] for r in records if key in r}
        assert {e.step: e.value for e in events.Scalars(key)} == pytest.approx(logged, rel=1e-6)
    assert len(logged) >= 1
    run_id = (out / "wandb-run-id").read_text().strip()
    (first,) = (out / "wandb").glob("offline-run-*")  # offline: nothing left the machine
    assert (first / f"run-{run_id}.wandb").stat().st_size > 0
    train(config(6, "wandb"), out, resume=True, progress=False)  # --log is the invocation's, not the checkpoint's
    assert (out / "wandb-run-id").read_text().strip() == run_id
    assert len(list((out / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))) == 2


def test_the_tracker_names_and_the_flat_config():
    assert parse_trackers("") == [] and parse_trackers("wandb, tensorboard") == ["wandb", "tensorboard"]
    with pytest.raises(DlmError, match="choose from: tensorboard, wandb"):
        parse_trackers("mlflow")
    with pytest.raises(DlmError, match="unknown tracker"):
        config(1, "mlflow").validate()
    flat = flat_config(preset_config("tiny"))
    assert flat["model.d_model"] == 64 and flat["train.objective"] == "mdlm" and flat["preset"] == "tiny"
