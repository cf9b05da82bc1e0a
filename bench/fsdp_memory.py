"""Peak memory per process and tokens/s of DDP vs FSDP2, 2 processes (torchrun, gloo on CPU), `small` and `base`.

    python bench/fsdp_memory.py                  # both presets, both ways; about 10 minutes on 2 busy cores
    python bench/fsdp_memory.py --presets small

Each setting is one ``torchrun --nproc_per_node=2 --standalone`` of this file in ``--worker`` mode, which calls
``dlm.train.loop.train`` for STEPS steps (masked diffusion, fp32, OMP_NUM_THREADS=1 per process) and stops there
as an interrupted run does (``stop_at``), so the last checkpoint is the sharded one: the gathering of the whole
checkpoint at the end of a finished FSDP run (every tensor on process 0 at once) is not part of the peak. What is
measured, per process: ``ru_maxrss`` (the peak resident set: Python, torch's libraries, data, model, gradients,
optimiser state, activations) and the same before ``train`` (imports only), whose difference is the training's;
tokens/s of the last log window (steps 3-4, all processes together). The batches are small (CPU), so the weights,
gradients and AdamW moments (16 bytes per parameter, replicated by DDP, split by FSDP) dominate, as they do for the
7-8B models FSDP is for. Writes docs/bench/fsdp_memory.json and its section of docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

STEPS = 4
SETTINGS = {"small": {"batch_size": 4, "seq_len": 256}, "base": {"batch_size": 2, "seq_len": 256}}


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (Linux: KiB)


def worker(preset: str, parallel: str, out: Path) -> None:
    import torch.distributed as dist

    from dlm.presets import preset_config
    from dlm.train.loop import train

    dist.init_process_group("gloo")
    before = maxrss_mib()
    cfg = preset_config(preset)
    cfg.train.objective, cfg.train.precision, cfg.train.parallel = "mdlm", "fp32", parallel
    cfg.train.batch_size, cfg.data.seq_len = SETTINGS[preset]["batch_size"], SETTINGS[preset]["seq_len"]
    cfg.train.log_every, cfg.train.eval_sequences = 2, 2
    train(cfg, out / "run", progress=False, stop_at=STEPS)
    record = {"rank": dist.get_rank(), "maxrss_before_mib": before, "maxrss_mib": maxrss_mib()}
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
        "peak_rss_mib": [round(r["maxrss_mib"]) for r in ranks],
        "rss_before_mib": [round(r["maxrss_before_mib"]) for r in ranks],
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
        + ". Peak RSS is `ru_maxrss` of each process over the whole run (torch's libraries included: the "
        "'before' column is the same after the imports, before `train`); state is the weights, gradients and AdamW "
        "moments a process holds (16 bytes per parameter, halved by FSDP over 2); tokens/s of steps 3-4 over both "
        "processes.",
        "",
        "| preset | parameters | parallel | state / process (MiB) | peak RSS rank 0 / 1 (MiB) | before train (MiB) "
        "| peak - before, rank 0 (MiB) | tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        md.append(
            f"| {r['preset']} | {r['parameters'] / 1e6:.1f}M | {r['parallel']} | {r['state_mib_per_rank']} | "
            f"{r['peak_rss_mib'][0]} / {r['peak_rss_mib'][1]} | {r['rss_before_mib'][0]} | "
            f"{r['peak_rss_mib'][0] - r['rss_before_mib'][0]} | {r['tokens_per_sec']} |"
        )
    write_results(
        "fsdp_memory",
        {"machine": info, "command": command, "steps": STEPS, "rows": rows},
        "\n".join(md),
        "RELIABILITY.md",
    )


if __name__ == "__main__":
    main()
