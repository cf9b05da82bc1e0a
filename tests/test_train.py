import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import dlm
from dlm.config import RunConfig, apply_overrides
from dlm.errors import DlmError
from dlm.presets import preset_config
from dlm.train import loop
from dlm.train.loop import train
from dlm.train.optim import lr_at
from dlm.train.runlock import RunLock
from tests.helpers import dlm as run_cli


def tiny(objective="mdlm", steps=20, **train_kw):
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.max_steps, cfg.train.precision = objective, steps, "fp32"
    cfg.train.batch_size = 4
    for k, v in train_kw.items():
        setattr(cfg.train, k, v)
    return cfg


def weights(run):
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_resume_is_bit_exact(tmp_path, objective):
    train(tiny(objective, ema=0.9), tmp_path / "full", progress=False)
    train(tiny(objective, ema=0.9), tmp_path / "split", progress=False, stop_at=10)  # interrupted at step 10
    state = json.loads((tmp_path / "split" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 10
    train(tiny(objective, ema=0.9), tmp_path / "split", progress=False, resume=True)
    assert_same_weights(tmp_path / "full", tmp_path / "split")
    ema_a = load_file(str(tmp_path / "full" / "checkpoint" / "ema.safetensors"))
    ema_b = load_file(str(tmp_path / "split" / "checkpoint" / "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    full = [json.loads(line)["step"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == sorted(set(full))


def test_resume_extends_a_finished_run(tmp_path):
    train(tiny(steps=20, lr_schedule="constant"), tmp_path / "full", progress=False)
    train(tiny(steps=10, lr_schedule="constant"), tmp_path / "ext", progress=False)
    train(tiny(steps=20, lr_schedule="constant"), tmp_path / "ext", progress=False, resume=True)
    assert_same_weights(tmp_path / "full", tmp_path / "ext")


def test_metrics_and_checkpoint_round_trip(tiny_mdlm_run):
    lines = [json.loads(x) for x in (tiny_mdlm_run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "loss" in r]
    assert {"step", "loss", "lr", "tokens_per_sec"} <= set(logged[0])
    assert logged[-1]["step"] == 40 and logged[-1]["loss"] < logged[0]["loss"]
    model, tok, cfg = dlm.load(tiny_mdlm_run)
    saved = weights(tiny_mdlm_run)
    for name, p in model.state_dict().items():
        if name in saved:
            assert torch.equal(p, saved[name])
    assert cfg.train.objective == "mdlm" and cfg.model.vocab_size == tok.vocab_size == 8192
    assert not cfg.model.causal and tok.mask_id is not None
    assert sorted(p.name for p in (tiny_mdlm_run / "checkpoint").iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "optimizer.safetensors",
        "tokenizer.json",
        "trainer_state.json",
    ]


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tiny_mdlm_run, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_mdlm_run / "checkpoint", bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DlmError, match="corrupt or truncated"):
        dlm.load(bad)
    shutil.copy(tiny_mdlm_run / "checkpoint" / "model.safetensors", bad / "model.safetensors")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["d_model"] = 128
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DlmError, match="does not match config.json"):
        dlm.load(bad)
    cfg["model"]["d_model"] = 64
    cfg["model"]["flash"] = True
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DlmError, match="unknown config key 'model.flash'"):
        dlm.load(bad)
    with pytest.raises(DlmError, match="no checkpoint found"):
        dlm.load(tmp_path / "nothing")


def test_config_overrides_are_strict():
    cfg = apply_overrides(preset_config("tiny"), ["model.d_model=128", "train.ema=0.99", "data.tokenizer=none"])
    assert cfg.model.d_model == 128 and cfg.train.ema == 0.99 and cfg.data.tokenizer is None
    with pytest.raises(DlmError, match="unknown config key 'model.width'"):
        apply_overrides(cfg, ["model.width=3"])
    with pytest.raises(DlmError, match="expected int"):
        apply_overrides(cfg, ["model.d_model=big"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_the_optimizer_updates_all_parameters_at_once():
    from dlm.train.optim import build_optimizer

    model = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(model, preset_config("tiny").train)
    assert all(g["foreach"] and not g["fused"] for g in optimizer.param_groups)  # CPU: foreach (CUDA: fused)
    assert [len(g["params"]) for g in optimizer.param_groups] == [1, 1]  # the matrix decays, the bias does not


def test_a_time_limit_stops_a_single_process_run_at_once(tmp_path):
    record = train(tiny(steps=12, time_limit_minutes=1e-6, log_every=5), tmp_path / "t", progress=False)
    assert record["step"] == 1  # one process checks the clock every step (DDP: at log steps)


def test_lr_schedule():
    cfg = preset_config("tiny").train
    cfg.max_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr_ratio = 110, 10, 1.0, 0.1
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(110, cfg) == pytest.approx(0.1)
    cfg.lr_schedule = "constant"
    assert lr_at(100, cfg) == 1.0


def test_time_conditioned_model_trains_and_samples(tmp_path):
    cfg = tiny(steps=5)
    cfg.model.time_conditioning = True
    train(cfg, tmp_path / "tc", progress=False)
    model, tok, cfg = dlm.load(tmp_path / "tc")
    assert cfg.model.time_conditioning
    engine = dlm.Engine(model, tok, cfg)
    for sampler in ("confidence", "ancestral"):
        _, config = engine.sampler_config(sampler, steps=4)
        assert config.time_conditioned  # the model fact reaches the sampler
        (result,) = engine.generate(["Anne"], sampler, gen_length=8, steps=4, stop_at_eos=False)
        assert result.prompt == "Anne" and "░" not in result.text
        assert len(result.tokens) == 8 and tok.mask_id not in result.tokens


def test_resume_from_only_the_old_checkpoint_is_bit_exact(tmp_path):
    """Killed between the two renames (only .checkpoint.old left), resumed, stopped again, resumed: the weights of
    the uninterrupted run."""
    train(tiny(), tmp_path / "full", progress=False)
    split = tmp_path / "split"
    train(tiny(), split, progress=False, stop_at=8)
    (split / "checkpoint").rename(split / ".checkpoint.old")
    train(tiny(), split, progress=False, resume=True, stop_at=14)
    assert sorted(p.name for p in split.iterdir() if p.is_dir()) == ["checkpoint"]
    train(tiny(), split, progress=False, resume=True)
    assert_same_weights(tmp_path / "full", split)


def test_resume_with_nothing_complete_refuses_unless_told_to_start_over(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DlmError, match="holds no complete checkpoint to resume; drop --resume"):
        train(tiny(steps=2), run, resume=True, progress=False)
    (run / ".checkpoint.tmp-999").mkdir(parents=True)  # a dead run's half-written save
    (run / ".checkpoint.tmp-999" / "model.safetensors").write_bytes(b"half")
    with pytest.raises(DlmError, match="holds no complete checkpoint"):
        train(tiny(steps=2), run, resume=True, progress=False)
    assert not (run / ".checkpoint.tmp-999").exists()  # cleaned by the attempt, which held the run lock
    train(tiny(steps=2), run, resume=True, overwrite=True, progress=False)  # resume, or start when nothing to resume
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 2


HOLD_LOCK = """
import sys, time
from dlm.train.runlock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_with_the_holder_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for flags in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(DlmError, match=f"in use by another training run \\(pid {holder.pid}\\)"):
                train(tiny(steps=2), run, progress=False, **flags)
        proc = run_cli("train", "--preset", "tiny", "--out", run, "--overwrite", "--quiet", check=False)
        assert proc.returncode == 2 and proc.stderr.splitlines() == [
            f"error: {run} is in use by another training run (pid {holder.pid}); wait for it to end or stop it, or "
            "choose another --out"
        ]
    finally:
        holder.kill()  # kill -9: the OS releases the lock
        holder.wait()
    with RunLock(run):
        pass


def strict_json_lines(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_lr_inf_stops_with_one_error_line_and_saves_nothing(tmp_path):
    run = tmp_path / "inf"
    args = ("train", "--preset", "tiny", "--max-steps", 12, "--lr", "inf", "--precision", "fp32", "--quiet")
    proc = run_cli(*args, "--save-every", 6, "--out", run, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: the loss or the gradients became NaN or infinite at step 2; stopped before saving (no checkpoint was "
        "saved). Lower the learning rate, check the data, or skip such steps with --set train.nonfinite=skip"
    ]
    assert not any(p.is_dir() for p in run.iterdir())  # no checkpoint, not even a temporary one
    (line,) = strict_json_lines(run / "metrics.jsonl")  # the log step that stopped it, NaN written as null
    assert line["step"] == 5 and line["loss"] is None and line["lr"] is None
    with pytest.raises(DlmError, match=r"the weights became NaN or infinite \(first: .*\); stopped before saving"):
        train(tiny(steps=4, lr=math.inf, save_every=1), tmp_path / "inf1", progress=False)  # broken by step 1
    assert not (tmp_path / "inf1" / "checkpoint").exists()


def test_a_divergence_after_a_checkpoint_keeps_it(tmp_path, monkeypatch):
    """The learning rate turns infinite at step 7: the run stops at the log step 10 and the checkpoint of step 5
    stays, finite, and the log is JSON."""
    monkeypatch.setattr(loop, "lr_at", lambda step, tc: math.inf if step >= 6 else lr_at(step, tc))
    run = tmp_path / "run"
    with pytest.raises(DlmError, match=f"at step 8; stopped before saving \\({run / 'checkpoint'} holds step 5\\)"):
        train(tiny(steps=20, save_every=5), run, progress=False)
    model, _, _ = dlm.load(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 5
    assert [r["step"] for r in strict_json_lines(run / "metrics.jsonl")] == [5, 10]


def test_nonfinite_skip_skips_and_counts_the_step(tmp_path, monkeypatch):
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def nan_at_step_3(params, max_norm):
        calls.append(1)
        norm = clip(params, max_norm)
        return torch.full_like(norm, math.nan) if len(calls) == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_at_step_3)
    run = tmp_path / "run"
    train(tiny(steps=10, nonfinite="skip"), run, progress=False)
    logged = [r for r in strict_json_lines(run / "metrics.jsonl") if "loss" in r]
    assert [r["skipped_steps"] for r in logged] == [1, 1] and all(math.isfinite(r["loss"]) for r in logged)
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["skipped_steps"] == 1
    with pytest.raises(DlmError, match="unknown train.nonfinite 'ignore'; choose one of: stop, skip"):
        tiny(nonfinite="ignore").validate()
