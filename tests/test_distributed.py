"""A 2-process torchrun DDP run (gloo on CPU) computes the same update as one process with the whole batch."""

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def test_torchrun_ddp_matches_single_process(tmp_path):
    common = ["--preset", "tiny", "--objective", "ar", "--max-steps", "6", "--quiet", "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         "-m", "dlm.cli", "train", *common, "--batch-size", "4", "--out", str(tmp_path / "ddp")],
        check=True, env=env, capture_output=True, text=True,
    )
    subprocess.run(
        [sys.executable, "-m", "dlm.cli", "train", *common, "--batch-size", "8", "--out", str(tmp_path / "one")],
        check=True, env=env, capture_output=True, text=True,
    )
    ddp = load_file(str(tmp_path / "ddp" / "checkpoint" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-5, rtol=1e-4)
    assert (tmp_path / "ddp" / "metrics.jsonl").read_text().count("tokens_per_sec") >= 1


def test_torchrun_ddp_masked_diffusion_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "dlm.cli",
         "train", "--preset", "tiny", "--objective", "mdlm", "--max-steps", "4", "--quiet", "--batch-size", "2",
         "--eval-every", "2", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: step 4") == 1  # rank 0 alone reports and checkpoints
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert sum("val_nats_per_token" in line for line in lines) == 2  # at step 2 and at the end


def test_torchrun_ddp_ranks_agree_on_the_time_limit_at_a_log_step(tmp_path):
    """The ranks compare their clocks only at log steps (no all-reduce every step), and all stop there together."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "dlm.cli",
         "train", "--preset", "tiny", "--objective", "ar", "--max-steps", "12", "--quiet", "--batch-size", "2",
         "--time-limit", "0.00001", "--set", "train.log_every=3", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: step 3") == 1 and "time limit of 1e-05 minutes reached at step 3" in proc.stdout
