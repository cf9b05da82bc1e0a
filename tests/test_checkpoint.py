"""Checkpoints under failure: folder states a crash (or two) can leave, each found and recovered; a crash at every
rename and delete of a save; kill -9 of a real training process; and loading that names a damaged tensor."""

import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dlm
from dlm.errors import DlmError
from dlm.presets import preset_config
from dlm.train import checkpoint as ckpt
from dlm.train.loop import train


def make(run: Path, source: Path, name: str, step: int, complete: bool = True) -> Path:
    """A copy of ``source`` as ``run/name`` holding ``step``, with a manifest or (complete=False) without one."""
    dst = run / name
    shutil.copytree(source, dst)
    state = json.loads((dst / "trainer_state.json").read_text())
    (dst / "trainer_state.json").write_text(json.dumps({**state, "step": step}))
    if complete:
        ckpt.write_manifest(dst, step)
    else:
        (dst / ckpt.MANIFEST).unlink()
    return dst


def names(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.is_dir())


@pytest.fixture
def source(tiny_mdlm_run):
    return tiny_mdlm_run / "checkpoint"


def test_a_saved_checkpoint_is_complete_and_damage_is_seen(source, tmp_path):
    assert ckpt.is_complete(source) and ckpt.checkpoint_step(source) == 40
    run = tmp_path / "run"
    final = make(run, source, "checkpoint", 20)
    make(run, source, ".checkpoint.old", 10)
    assert ckpt.newest_complete(run) == final
    with open(final / "model.safetensors", "r+b") as f:  # truncated: the manifest's size no longer matches
        f.truncate(100)
    assert not ckpt.is_complete(final) and ckpt.newest_complete(run) == run / ".checkpoint.old"
    (final / ckpt.MANIFEST).write_text('{"step": 20, "files": ')  # a torn manifest
    assert not ckpt.is_complete(final)


@pytest.mark.parametrize(
    "state, best",
    [
        ({".checkpoint.old": 10}, 10),  # killed between the two renames
        ({".checkpoint.old": 10, ".checkpoint.tmp-123": 20}, 20),  # the same, the new one complete in its temp folder
        ({"checkpoint": 20, ".checkpoint.tmp-123": None}, 20),  # killed while writing: an incomplete temp folder
        ({"checkpoint": 10, ".checkpoint.tmp-123": 20, ".checkpoint.trash-9": None}, 20),
        ({".checkpoint.tmp-123": None}, None),  # killed during the first save: nothing complete
    ],
)
def test_recover_keeps_the_newest_complete_checkpoint_and_cleans_the_rest(source, tmp_path, state, best):
    run = tmp_path / "run"
    for name, step in state.items():
        make(run, source, name, step or 0, complete=step is not None)
    found = ckpt.newest_complete(run)
    assert (found and ckpt.checkpoint_step(found)) == best
    final = ckpt.recover(run)
    assert names(run) == (["checkpoint"] if best else [])
    if best:
        assert final == run / "checkpoint" and ckpt.is_complete(final) and ckpt.checkpoint_step(final) == best


def test_a_checkpoint_without_manifest_of_an_older_dlm_still_counts(source, tmp_path):
    run = tmp_path / "run"
    make(run, source, "checkpoint", 20, complete=False)
    make(run, source, ".checkpoint.tmp-5", 30, complete=False)  # a temp folder without one may be half written
    assert ckpt.newest_complete(run) == run / "checkpoint"
    assert ckpt.checkpoint_step(run / "checkpoint") == 20


class Crash(Exception):
    pass


def crash_after(monkeypatch, n: int) -> None:
    """Every rename and tree removal after the first ``n`` raises Crash: the process died there."""
    calls = [0]
    rename, rmtree = Path.rename, shutil.rmtree

    def tick():
        calls[0] += 1
        if calls[0] > n:
            raise Crash

    monkeypatch.setattr(Path, "rename", lambda self, target: (tick(), rename(self, target))[1])
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: (tick(), rmtree(path, *a, **k))[1])


def test_two_crashes_in_a_row_never_lose_the_run(source, tmp_path, monkeypatch):
    """The issue's double crash: only .checkpoint.old is left; the next run recovers it and saves step 15, and a
    crash at any rename or removal of that recovery and save leaves a complete checkpoint of step 10 or 15."""
    model, tokenizer, config = dlm.load(source)
    for n in range(20):
        run = tmp_path / f"run{n}"
        make(run, source, ".checkpoint.old", 10)
        crashed = False
        with monkeypatch.context() as m:
            crash_after(m, n)
            try:
                ckpt.recover(run)
                ckpt.save_checkpoint(run, model=model, tokenizer=tokenizer, config=config, trainer_state={"step": 15})
            except Crash:
                crashed = True
        found = ckpt.newest_complete(run)
        step = found and ckpt.checkpoint_step(found)
        assert step in (10, 15), (n, names(run))
        ckpt.recover(run)  # the run after the crash
        assert names(run) == ["checkpoint"] and ckpt.checkpoint_step(run / "checkpoint") == step
        dlm.load(run)
        if not crashed:
            assert step == 15
            break
    else:
        pytest.fail("the save never completed")


def killed_run(run: Path) -> None:
    torch.set_num_threads(1)  # a forked child must not use the parent's OpenMP pool (as DataLoader workers)

    cfg = preset_config("tiny")
    cfg.train.max_steps, cfg.train.precision, cfg.train.batch_size, cfg.train.save_every = 10**6, "fp32", 2, 1
    train(cfg, run, resume=True, overwrite=True, progress=False)


def test_kill_9_at_random_points_leaves_a_resumable_checkpoint(tiny_mdlm_run, tmp_path):
    """A tiny run saving every step (and never ending), killed -9 at a random moment after its next save, three
    times: each time the newest complete checkpoint loads, its step has moved on, and the next run resumes from it.
    (The trainer is a child forked from this process, which the session's tiny run has made import everything a
    run needs, torch._dynamo through AdamW included: a fresh interpreter spends seconds on that.)"""
    run, rng, last = tmp_path / "run", random.Random(0), -1
    for _ in range(3):
        proc = multiprocessing.get_context("fork").Process(target=killed_run, args=(run,))
        proc.start()
        deadline = time.time() + 60
        while proc.is_alive() and ckpt.checkpoint_step(run / "checkpoint") <= last and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode in (-signal.SIGKILL, 0)
        found = ckpt.newest_complete(run)
        assert found is not None, names(run)
        step = ckpt.load_trainer_state(found)["step"]
        assert step > last
        dlm.load(run)
        last = step


def damaged(source: Path, tmp_path: Path, change) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(bad / "model.safetensors"))
    return bad


NAME = "blocks.0.attn.qkv.weight"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t[NAME].view(-1).__setitem__(3, float("nan")), f"tensor '{NAME}' holds NaN or infinite values"),
        (lambda t: t.__setitem__(NAME, t[NAME].long()), f"tensor '{NAME}' is int64, the model expects float32"),
        (lambda t: t.__setitem__(NAME, t[NAME][:-1]), f"tensor '{NAME}' has shape .* does not match config.json"),
        (lambda t: t.pop(NAME), f"missing tensors \\['{NAME}'\\]"),
    ],
)
def test_loading_names_the_bad_tensor(source, tmp_path, change, message):
    assert NAME in load_file(str(source / "model.safetensors"))
    with pytest.raises(DlmError, match=message) as e:
        dlm.load(damaged(source, tmp_path, change))
    assert "\n" not in str(e.value)


def test_a_damaged_optimizer_state_is_refused_on_resume(tiny_mdlm_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_mdlm_run, run)
    path = run / "checkpoint" / "optimizer.safetensors"
    tensors = load_file(str(path))
    tensors["state.0.exp_avg"] = torch.full_like(tensors["state.0.exp_avg"], float("inf"))
    save_file(tensors, str(path))
    ckpt.write_manifest(run / "checkpoint", 40)
    cfg = preset_config("tiny")
    cfg.train.max_steps = 41
    with pytest.raises(DlmError, match="tensor 'state.0.exp_avg' holds NaN or infinite values"):
        train(cfg, run, resume=True, progress=False)
