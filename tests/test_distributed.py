"""torchrun DDP (gloo on CPU): a 2-process run computes the same update as one process with the whole batch, and
Diffusion-LM's gradients, continuous path and side paths, are averaged over the processes."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def test_torchrun_ddp_matches_single_process(tmp_path):
    common = ["--preset", "tiny", "--objective", "ar", "--max-steps", "6", "--quiet", "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "dlm.cli",
            "train",
            *common,
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "ddp"),
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    subprocess.run(
        [sys.executable, "-m", "dlm.cli", "train", *common, "--batch-size", "8", "--out", str(tmp_path / "one")],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    ddp = load_file(str(tmp_path / "ddp" / "checkpoint" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], atol=2e-5, rtol=1e-4)
    assert (tmp_path / "ddp" / "metrics.jsonl").read_text().count("tokens_per_sec") >= 1


def test_torchrun_ddp_masked_diffusion_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "dlm.cli",
            "train",
            "--preset",
            "tiny",
            "--objective",
            "mdlm",
            "--max-steps",
            "4",
            "--quiet",
            "--batch-size",
            "2",
            "--eval-every",
            "2",
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: step 4") == 1  # rank 0 alone reports and checkpoints
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert sum("val_nats_per_token" in line for line in lines) == 2  # at step 2 and at the end


DIFFUSION_LM_RANK = """
import copy, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from dlm.config import ModelConfig
from dlm.models import Transformer
from dlm.objectives.embedding import DiffusionLM

dist.init_process_group("gloo")
rank = dist.get_rank()
x0 = torch.randint(40, (3, 10), generator=torch.Generator().manual_seed(10 + rank))  # each rank its own data


def loss(m):
    objective = DiffusionLM(mask_id=0, eos_id=0, vocab_size=40)  # vp-sqrt, the paper's schedule
    return objective.loss(m, x0, torch.Generator().manual_seed(20 + rank)).loss


for tie in (False, True):
    torch.manual_seed(0)  # the same weights on both ranks
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16,
                      time_conditioning=True, embed_dim=8, tie_embeddings=tie)
    model = Transformer(cfg)
    plain = copy.deepcopy(model)
    loss(plain).backward()
    own = [p.grad.clone() for p in plain.parameters()]  # this rank's own gradients
    mean = [g.clone() for g in own]
    for g in mean:  # what DDP must produce: the mean over the ranks
        dist.all_reduce(g)
        g /= 2
    ddp = DistributedDataParallel(model)  # held: a DDP collected before the backward syncs nothing
    loss(ddp).backward()
    for (name, p), want in zip(model.named_parameters(), mean):
        torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name} (tie {tie}): {m}")
    differ = [not torch.allclose(p.grad, g) for p, g in zip(model.parameters(), own) if g.abs().sum() > 0]
    assert differ and all(differ)  # every nonzero gradient was averaged with the other rank's
    print("synced", rank, tie)
dist.destroy_process_group()
"""


def test_ddp_synchronises_every_gradient_of_diffusion_lm(tmp_path):
    """The continuous path runs through DDP's forward (call_method), the side paths (embeddings, rounding logits)
    on the module inside: every gradient is the mean over the processes, with and without tied embeddings."""
    root = str(Path(__file__).resolve().parents[1])  # this checkout's dlm in the processes
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    script = tmp_path / "rank.py"
    script.write_text(DIFFUSION_LM_RANK)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("synced") == 4


def test_torchrun_ddp_ranks_agree_on_the_time_limit_at_a_log_step(tmp_path):
    """The ranks compare their clocks only at log steps (no all-reduce every step), and all stop there together."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            "-m",
            "dlm.cli",
            "train",
            "--preset",
            "tiny",
            "--objective",
            "ar",
            "--max-steps",
            "12",
            "--quiet",
            "--batch-size",
            "2",
            "--time-limit",
            "0.00001",
            "--set",
            "train.log_every=3",
            "--out",
            str(tmp_path / "ddp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: step 3") == 1 and "time limit of 1e-05 minutes reached at step 3" in proc.stdout
