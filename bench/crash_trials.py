"""Crash trials: a tiny training run killed with SIGKILL at random moments, once at a time and twice in a row, and
the promise that it never loses its newest complete checkpoint and resumes bit for bit.

    python bench/crash_trials.py [--kills 20] [--doubles 10] [--seed 0]

Each trainer is the same endless ``tiny`` masked-diffusion run (``max_steps`` 10^6, a checkpoint after every step,
``--resume --overwrite``) forked from this process, so that it starts in milliseconds.

- Single crashes: ``--kills`` times, wait until a checkpoint newer than the last one is complete, then wait a
  random 0-300 ms (the next save is then anywhere in its write, fsync, manifest, rename or delete) and kill -9.
  After each kill: is there a complete checkpoint, does it load, has its step moved on; and were the dead run's
  temporary folders gone after the next start.
- Double crashes: ``--doubles`` times, kill as above, then start the next run and kill it again after a random
  0-150 ms: during its start-up, its recovery of the previous crash's folders or its first save. Same checks.
- Bit-exactness: the last checkpoint, resumed for 3 more steps, against an uninterrupted run stopped at the same
  step (``stop_at``, the same LR schedule): equal weights, bit for bit.

Writes docs/bench/crash_trials.json and the ``crash_trials`` section of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402

import dlm  # noqa: E402
from dlm.presets import preset_config  # noqa: E402
from dlm.train import checkpoint as ckpt  # noqa: E402
from dlm.train.loop import train  # noqa: E402


def config():
    cfg = preset_config("tiny")
    cfg.train.max_steps, cfg.train.precision, cfg.train.batch_size, cfg.train.save_every = 10**6, "fp32", 2, 1
    return cfg


def endless(run: Path) -> None:
    torch.set_num_threads(1)  # a forked child must not share the parent's OpenMP pool
    train(config(), run, resume=True, overwrite=True, progress=False)


def start(run: Path):
    proc = multiprocessing.get_context("fork").Process(target=endless, args=(run,))
    proc.start()
    return proc


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


def debris(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith((ckpt.TMP_PREFIX, ckpt.TRASH_PREFIX)))


def check(run: Path, last: int) -> dict:
    found = ckpt.newest_complete(run)
    if found is None:
        return {"complete": False, "loads": False, "step": None, "advanced": False}
    step = ckpt.load_trainer_state(found)["step"]
    try:
        dlm.load(run)
        loads = True
    except Exception:  # noqa: BLE001 (a trial records any failure to load)
        loads = False
    return {"complete": True, "loads": loads, "step": step, "advanced": step > last}


def wait_for_new(run: Path, last: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = ckpt.newest_complete(run) if run.exists() else None
        if found is not None and ckpt.checkpoint_step(found) > last:
            return
        time.sleep(0.01)
    raise RuntimeError("no new checkpoint within the timeout")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--doubles", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng, trials = random.Random(args.seed), []
    torch.set_num_threads(1)  # as the forked trainers: the same arithmetic, so the bit-exact check is fair
    with tempfile.TemporaryDirectory() as tmp:
        run, last = Path(tmp) / "run", -1
        train(config(), Path(tmp) / "warm", stop_at=1, progress=False)  # imports everything before the forks
        for kind, count in (("single", args.kills), ("double", args.doubles)):
            for _ in range(count):
                proc = start(run)
                wait_for_new(run, last)
                time.sleep(rng.uniform(0.0, 0.3))
                kill(proc)
                left = debris(run)
                if kind == "double":  # the next run dies during its recovery or first save
                    proc = start(run)
                    time.sleep(rng.uniform(0.0, 0.15))
                    kill(proc)
                trial = {"kind": kind, **check(run, last), "debris_after_kill": len(left)}
                proc = start(run)  # the next start cleans what the dead runs left
                wait_for_new(run, trial["step"] if trial["step"] is not None else last)
                trial["debris_cleaned"] = not set(left) & set(debris(run))
                kill(proc)
                last = ckpt.checkpoint_step(ckpt.newest_complete(run))
                trials.append(trial)
                print(trial, flush=True)
        step = ckpt.load_trainer_state(ckpt.newest_complete(run))["step"]
        train(config(), run, resume=True, stop_at=step + 3, progress=False)
        train(config(), Path(tmp) / "straight", stop_at=step + 3, progress=False)
        a, _, _ = dlm.load(run)
        b, _, _ = dlm.load(Path(tmp) / "straight")
        exact = all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    info = machine()
    rows = []
    for kind in ("single", "double"):
        ts = [t for t in trials if t["kind"] == kind]
        rows.append(
            {
                "kind": kind,
                "trials": len(ts),
                "complete": sum(t["complete"] for t in ts),
                "loads": sum(t["loads"] for t in ts),
                "advanced": sum(t["advanced"] for t in ts),
                "debris": sum(t["debris_after_kill"] > 0 for t in ts),
                "cleaned": sum(t["debris_cleaned"] for t in ts),
            }
        )
    data = {"machine": info, "trials": trials, "summary": rows, "final_step": step + 3, "bit_exact": exact}
    table = "\n".join(
        f"| {r['kind']} | {r['trials']} | {r['complete']} | {r['loads']} | {r['advanced']} | {r['debris']} | "
        f"{r['cleaned']} |"
        for r in rows
    )
    markdown = f"""## Crash trials

Command: `python bench/crash_trials.py --kills {args.kills} --doubles {args.doubles} --seed {args.seed}`
Machine: {machine_line(info)}

An endless `tiny` run saving after every step, killed with SIGKILL a random 0-300 ms after a checkpoint completed
(single), or killed so and then killed again 0-150 ms after the next run started, during its start-up, recovery
or first save, which of these is not recorded (double). Columns: trials; a complete checkpoint left; it loads
with `dlm.load`; its step is newer than the previous trial's; the kill left temporary folders (`.checkpoint.tmp-*`
/ `.checkpoint.trash-*`); the next run's start removed them (of all trials).

| crash | trials | complete checkpoint | loads | step moved on | left debris | debris cleaned |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{table}

Then the last checkpoint (step {step}) was resumed for 3 steps and compared with an uninterrupted run stopped at
step {step + 3}: the weights are {"bit for bit equal" if exact else "NOT equal"}.
"""
    write_results("crash_trials", data, markdown, document="RELIABILITY.md")
    print(markdown)


if __name__ == "__main__":
    main()
