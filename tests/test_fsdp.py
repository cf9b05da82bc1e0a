"""FSDP2 under torchrun (2 gloo processes on CPU): the same update as one process with the whole batch, sharded and
whole checkpoints that resume bit for bit, and checkpoints that ``dlm.load`` reads in either form.

One torchrun runs all the FSDP trainings in the same two processes (a process group made by the caller is kept
across ``train`` calls): torchrun and torch's import cost about 10 s each time on a 2-core machine."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dlm
from dlm.config import RunConfig
from dlm.errors import DlmError
from dlm.train import checkpoint as ckpt
from dlm.train import sharded

ROOT = str(Path(__file__).resolve().parents[1])  # this checkout's dlm in the subprocesses
TRAIN = dict(objective="ar", max_steps=4, precision="fp32", ema=0.5, eval_sequences=12, log_every=2)  # 3 val batches

RANKS = """
import shutil, sys, torch, torch.distributed as dist
from pathlib import Path
from dlm.presets import preset_config
from dlm.train import checkpoint as ckpt, sharded
from dlm.train.loop import train

dist.init_process_group("gloo")  # kept by train() across the runs below
rank, root = dist.get_rank(), Path(sys.argv[1])


def config(**options):
    cfg = preset_config("tiny")
    for key, value in {**TRAIN, "batch_size": 4, "parallel": "fsdp", **options}.items():
        setattr(cfg.train, key, value)
    return cfg


# a: uninterrupted, 4 steps (a sharded checkpoint at step 2, whole ones at the end); validation at step 2 too
train(config(save_every=2, eval_every=2), root / "a", progress=False)
# b: interrupted at step 2 (sharded); c: a copy of it made whole; both resumed to step 4
train(config(save_every=2), root / "b", progress=False, stop_at=2)
if rank == 0:
    assert sharded.is_sharded(root / "b" / "checkpoint") and ckpt.checkpoint_step(root / "b" / "checkpoint") == 2
    shutil.copytree(root / "b", root / "b2")  # kept sharded for the loading test
    shutil.copytree(root / "b", root / "c")
    assert not sharded.is_sharded(ckpt.consolidate(root / "c"))
    shutil.copytree(root / "c", root / "c2")
dist.barrier()
train(config(save_every=2, eval_every=2, activation_checkpointing=True), root / "b", resume=True, progress=False)
train(config(save_every=2, eval_every=2), root / "c", resume=True, progress=False)
print("trained", rank)
dist.destroy_process_group()
""".replace("TRAIN", repr(TRAIN))


def _files(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    checkpoint = run / "checkpoint"
    return {name: load_file(str(checkpoint / f"{name}.safetensors")) for name in ("model", "ema", "optimizer")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("fsdp")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    script = root / "ranks.py"
    script.write_text(RANKS)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    proc = subprocess.run([*torchrun, str(script), str(root)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained") == 2
    assert proc.stdout.count(", resuming at step 2") == 2  # b and c resumed (a restart would give a's bits too)
    # the reference: one process with the whole batch of 2 x 4 sequences
    one = [f"--set=train.{key}={value}" for key, value in TRAIN.items() if key not in ("objective", "max_steps")]
    proc = subprocess.run(
        [sys.executable, "-m", "dlm.cli", "train", "--preset", "tiny", "--objective", "ar", "--max-steps", "4",
         "--batch-size", "8", "--quiet", *one, "--out", str(root / "one")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_fsdp_matches_one_process_with_the_whole_batch(runs):
    fsdp, one = _files(runs / "a"), _files(runs / "one")
    for name in fsdp:
        assert fsdp[name].keys() == one[name].keys(), name  # whole files, named as a one-process run names them
        for key in one[name]:  # the sums of the gradient reduction and of the clipping norm differ in order only
            torch.testing.assert_close(fsdp[name][key], one[name][key], atol=2e-5, rtol=1e-4, msg=f"{name} {key}")


def test_fsdp_resumes_bit_exact_from_a_sharded_and_a_whole_checkpoint(runs):
    """b resumed from its sharded step-2 checkpoint (with activation checkpointing, which recomputes the same
    values), c from the same made whole: both equal the uninterrupted run bit for bit, optimiser state included."""
    a = _files(runs / "a")
    for run in ("b", "c"):
        resumed = _files(runs / run)
        for name in a:
            assert resumed[name].keys() == a[name].keys()
            for key in a[name]:
                assert torch.equal(resumed[name][key], a[name][key]), f"{run}: {name} {key}"
    assert (runs / "a" / "metrics.jsonl").read_text().count("val_nats_per_token") == 2  # step 2 and the end


def test_fsdp_checkpoints_load_in_either_form(runs, tmp_path):
    """dlm.load reads the whole checkpoint and the sharded one (assembled); the shards give any block of rows
    (those of another number of processes); a missing shard makes the checkpoint incomplete."""
    model, _, cfg = dlm.load(runs / "a")
    assert cfg.train.parallel == "fsdp" and all(torch.isfinite(p).all() for p in model.parameters())
    split = runs / "b2" / "checkpoint"  # b's sharded step-2 checkpoint; c2 holds it made whole
    assert sharded.is_sharded(split) and sorted(p.name for p in sharded.shard_files(split)) == [
        "shard-00000-of-00002.safetensors",
        "shard-00001-of-00002.safetensors",
    ]
    from_shards = dlm.load(runs / "b2")[0].state_dict()  # the EMA weights
    whole = load_file(str(runs / "c2" / "checkpoint" / "ema.safetensors"))
    for key, value in from_shards.items():
        assert torch.equal(value, whole.get(key, whole["embed.weight"])), key  # (the tied head: embed.weight)
    rows = sharded.Tensors(split, "optimizer")
    name = next(n for n in rows.names() if rows.shapes[n] and rows.shapes[n][0] % 3)  # rows uneven in 3 blocks
    n = rows.shapes[name][0]
    blocks = [rows.read(name, (min(i * -(-n // 3), n), min((i + 1) * -(-n // 3), n))) for i in range(3)]
    assert torch.equal(torch.cat(blocks), rows.read(name))  # across the boundary of the two shards
    copy = tmp_path / "run"
    shutil.copytree(runs / "b2", copy)
    (copy / "checkpoint" / "shard-00001-of-00002.safetensors").unlink()
    assert ckpt.newest_complete(copy) is None  # the manifest lists the missing shard


def test_parallel_is_validated_and_fsdp_needs_torchrun(tmp_path):
    cfg = RunConfig()
    cfg.train.parallel = "zero3"
    with pytest.raises(DlmError, match="unknown train.parallel 'zero3'; choose one of: ddp, fsdp"):
        cfg.validate()
    cfg.train.parallel = "fsdp"
    from dlm.train.loop import train

    with pytest.raises(DlmError, match="launch with torchrun"):
        train(cfg, tmp_path / "x")


def test_activation_checkpointing_recomputes_each_block_with_the_same_gradients():
    from dlm.config import ModelConfig
    from dlm.models import Transformer
    from dlm.train.activation_checkpointing import checkpoint_activations

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16, dropout=0.1)
    plain = Transformer(cfg)
    wrapped = copy.deepcopy(plain)
    checkpoint_activations(wrapped)
    calls = []
    for block in wrapped.layers():
        block.attn.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randint(40, (2, 12))
    grads = []
    for model in (plain, wrapped):
        torch.manual_seed(1)  # the same dropout masks, recomputed from the forward's RNG state
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    assert len(calls) == 2 * cfg.n_layers  # each block ran again in the backward
    for g_plain, g_wrapped in zip(*grads):
        assert torch.equal(g_plain, g_wrapped)
    twin = copy.deepcopy(wrapped)  # a copy's blocks run their own weights
    assert twin.layers()[0].forward.__self__ is twin.layers()[0]
    with torch.no_grad():
        assert torch.equal(twin.eval()(x), wrapped.eval()(x))
