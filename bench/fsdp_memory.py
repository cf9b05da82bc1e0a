"""Peak memory per process and tokens/s of DDP vs FSDP2, 2 processes (torchrun, gloo on CPU), `small` and `base`.

    python bench/fsdp_memory.py                  # both presets, both ways; about 10 minutes on 2 busy cores
    python bench/fsdp_memory.py --presets small

Each setting is one ``torchrun --nproc_per_node=2 --standalone`` of this file in ``--worker`` mode, which calls
``dlm.train.loop.train`` for STEPS steps (masked diffusion, fp32, OMP_NUM_THREADS=1 per process) and stops there
as an interrupted run does (``stop_at``), so the last checkpoint is the sharded one: the gathering of the whole
checkpoint at the end of a finished FSDP run (every tensor on process 0 at once) is not part of the peak. What is
measured, per process, from /proc/self/status: the peak resident set (VmHWM: Python, torch's libraries, data,
model, gradients, optimiser state, activations, and what the allocator keeps) of the **setup** (data, the model
built whole, FSDP's sharding) and of the **training** (the steps, validation, the last checkpoint): when the
optimiser is built, freed memory is handed back to the OS (``malloc_trim``), the resident set noted and the peak
reset (``/proc/self/clear_refs``); tokens/s of the last log window (steps 3-4, all processes together). The
batches are small (CPU), so the weights, gradients and AdamW moments (16 bytes per parameter, replicated by DDP,
split by FSDP) weigh more than the activations, as they do for the 7-8B models FSDP is for.
Writes docs/bench/fsdp_memory.json and its section of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS = 4
SETTINGS = {"small": {"batch_size": 4, "seq_len": 256}, "base": {"batch_size": 2, "seq_len": 256}}


def status_mib(field: str) -> float:
    """VmHWM (the peak resident set since the last reset) or VmRSS (now) of this process, in MiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(field + r":\s+(\d+) kB", text).group(1)) / 1024


def start_training_phase(phases: dict) -> None:
    """The setup is over: note its peak, hand freed memory back to the OS, note what is resident, reset the peak."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    phases["setup_peak_mib"], phases["resident_mib"] = status_mib("VmHWM"), status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")


def worker(preset: str, parallel: str, out: Path) -> None:
    import torch.distributed as dist

    import dlm.train.loop as loop
    from dlm.presets import preset_config

    dist.init_process_group("gloo")
    phases = {"imports_mib": status_mib("VmRSS")}
    build_optimizer = loop.build_optimizer

    def build_optimizer_then_measure(model, train_config):  # (after the model is built and sharded)
        optimizer = build_optimizer(model, train_config)
        start_training_phase(phases)
        return optimizer

    loop.build_optimizer = build_optimizer_then_measure
    cfg = preset_config(preset)
    cfg.train.objective, cfg.train.precision, cfg.train.parallel = "mdlm", "fp32", parallel
    cfg.train.batch_size, cfg.data.seq_len = SETTINGS[preset]["batch_size"], SETTINGS[preset]["seq_len"]
    cfg.train.log_every, cfg.train.eval_sequences = 2, 2
    loop.train(cfg, out / "run", progress=False, stop_at=STEPS)
    record = {"rank": dist.get_rank(), **phases, "training_peak_mib": status_mib("VmHWM")}
    if dist.get_rank() == 0:
        lines = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
        record["tokens_per_sec"] = [r for r in lines if "tokens_per_sec" in r][-1]["tokens_per_sec"]
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def parameters(preset: str) -> int:
    import torch

    from dlm.models.transformer import Transformer
    from dlm.presets import preset_config

    cfg = preset_config(preset)
    cfg.data.seq_len = cfg.model.max_seq_len = SETTINGS[preset]["seq_len"]
    with torch.device("meta"):
        return Transformer(cfg.model).num_parameters()  # (the default 8k vocabulary, as the bundled corpus gives)


def run(preset: str, parallel: str) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", __file__]
        proc = subprocess.run(
            [*command, "--worker", preset, parallel, tmp], env=env, capture_output=True, text=True, timeout=1800
        )
        if proc.returncode != 0:
            raise SystemExit(f"{preset} {parallel} failed:\n{proc.stderr[-3000:]}")
        ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(2)]
    return {
        "preset": preset,
        "parallel": parallel,
        **{key: [round(r[key]) for r in ranks] for key in ("imports_mib", "setup_peak_mib", "resident_mib")},
        "training_peak_mib": [round(r["training_peak_mib"]) for r in ranks],
        "tokens_per_sec": round(ranks[0]["tokens_per_sec"], 1),
    }


def main() -> None:
    from common import machine, machine_line, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"], choices=list(SETTINGS))
    parser.add_argument("--worker", nargs=3, metavar=("PRESET", "PARALLEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1], Path(args.worker[2]))
    info, rows = machine(), []
    for preset in args.presets:
        n = parameters(preset)
        for parallel in ("ddp", "fsdp"):
            row = {
                **run(preset, parallel),
                "parameters": n,
                "state_mib_per_rank": round(16 * n / 2**20 / (1 + (parallel == "fsdp"))),
            }
            print(row, flush=True)
            rows.append(row)
    command = "python bench/fsdp_memory.py" + (
        "" if args.presets == ["small", "base"] else " --presets " + " ".join(args.presets)
    )
    md = [
        "## FSDP2 vs DDP: memory per process and tokens/s",
        "",
        f"`{command}` on {machine_line(info)}: 2 processes (torchrun, gloo, 1 thread each), masked diffusion, fp32, "
        f"{STEPS} steps of "
        + ", ".join(
            f"{p}: {s['batch_size']} x {s['seq_len']} tokens per process"
            for p, s in SETTINGS.items()
            if p in args.presets
        )
        + ". Memory is the peak resident set of each process (VmHWM, torch's libraries included: about "
        f"{rows[0]['imports_mib'][0]} MiB after the imports) during the setup (data, the model built whole, FSDP's "
        "sharding) and during the training (steps, validation, the sharded or DDP checkpoint), measured apart "
        "(freed memory handed back and the peak reset in between); state is the weights, gradients and AdamW moments "
        "a process holds (16 bytes per parameter, halved by FSDP over 2); tokens/s of steps 3-4 over both "
        "processes.",
        "",
        "| preset | parameters | parallel | state / process (MiB) | setup peak rank 0 / 1 (MiB) "
        "| training peak rank 0 / 1 (MiB) | tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        md.append(
            f"| {r['preset']} | {r['parameters'] / 1e6:.1f}M | {r['parallel']} | {r['state_mib_per_rank']} | "
            f"{r['setup_peak_mib'][0]} / {r['setup_peak_mib'][1]} | "
            f"{r['training_peak_mib'][0]} / {r['training_peak_mib'][1]} | {r['tokens_per_sec']} |"
        )
    write_results(
        "fsdp_memory",
        {"machine": info, "command": command, "steps": STEPS, "rows": rows},
        "\n".join(md),
        "RELIABILITY.md",
    )


if __name__ == "__main__":
    main()
