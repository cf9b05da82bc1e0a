"""Training throughput (tokens/s) of the dlm trainer vs a bare PyTorch loop, eager vs compiled, fp32 vs bf16.

    python bench/throughput.py --presets tiny small

For each preset and setting, ``dlm.train.loop.train`` runs 2 x STEPS steps (STEPS: 60 for tiny, 4 for small) of
the masked-diffusion objective and the tokens/s of the second half is kept (the first half absorbs compilation and
warm-up). The bare loop runs the same model, objective, gradient clipping and optimiser on pre-loaded batches with
nothing else (no data loader, LR schedule, logging, checkpointing): the difference is the trainer's overhead. Tiny
eager fp32 runs are repeated 3 times (median). Writes docs/bench/throughput.json and its section of
docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402

from dlm.data.packing import load_packed  # noqa: E402
from dlm.models.transformer import Transformer  # noqa: E402
from dlm.objectives import OBJECTIVES  # noqa: E402
from dlm.presets import preset_config  # noqa: E402
from dlm.train.loop import train  # noqa: E402
from dlm.train.optim import build_optimizer  # noqa: E402


def trainer_tokens_per_sec(preset: str, steps: int, compile: bool, precision: str) -> float:
    cfg = preset_config(preset)
    cfg.train.objective, cfg.train.max_steps, cfg.train.log_every = "mdlm", 2 * steps, steps
    cfg.train.compile, cfg.train.precision, cfg.train.eval_sequences = compile, precision, 1
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out, progress=False)
        records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "tokens_per_sec" in r][-1]["tokens_per_sec"]


def bare_tokens_per_sec(preset: str, steps: int, compile: bool, precision: str) -> float:
    cfg = preset_config(preset)
    tokenizer, train_set, _ = load_packed(cfg.data)
    cfg.model.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    forward = torch.compile(model) if compile else model
    optimizer = build_optimizer(model, cfg.train)
    objective = OBJECTIVES.build(cfg, tokenizer)  # mdlm, as the trainer builds it
    batches = [
        train_set.batch(range(i * cfg.train.batch_size, (i + 1) * cfg.train.batch_size)) for i in range(2 * steps)
    ]
    generator = torch.Generator().manual_seed(0)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    for i, x0 in enumerate(batches):
        if i == steps:
            start = time.perf_counter()
        with autocast():
            loss = objective.loss(forward, x0, generator).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)  # the same update as the trainer
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * x0.numel() / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured steps, after as many warm-up steps (default: 20 for tiny, 4 for small and base)",
    )
    ap.add_argument("--settings", nargs="+", default=["eager-fp32", "eager-bf16", "compile-fp32", "compile-bf16"])
    args = ap.parse_args()
    rows, data = [], {"machine": machine(), "results": []}
    for preset in args.presets:
        steps = args.steps or (60 if preset == "tiny" else 4)
        repeats = 3 if preset == "tiny" else 1  # tiny steps take ~0.1 s: take the median of 3 runs
        for setting in args.settings:
            mode, precision = setting.split("-")
            compile = mode == "compile"
            n = repeats if setting == "eager-fp32" else 1
            dlm_tps = statistics.median(trainer_tokens_per_sec(preset, steps, compile, precision) for _ in range(n))
            bare_tps = (
                statistics.median(bare_tokens_per_sec(preset, steps, compile, precision) for _ in range(repeats))
                if setting == "eager-fp32"
                else None
            )
            overhead = (1 - dlm_tps / bare_tps) if bare_tps else None
            data["results"].append(
                {
                    "preset": preset,
                    "setting": setting,
                    "steps": steps,
                    "dlm_tokens_per_sec": dlm_tps,
                    "bare_tokens_per_sec": bare_tps,
                    "overhead": overhead,
                }
            )
            rows.append(
                f"| {preset} | {setting} | {dlm_tps:,.0f} | "
                + (f"{bare_tps:,.0f} | {100 * overhead:+.1f}% |" if bare_tps else "| |")
            )
            print(rows[-1], flush=True)
    cmd = f"python bench/throughput.py --presets {' '.join(args.presets)}" + (
        f" --steps {args.steps}" if args.steps else ""
    )
    md = f"""## Training throughput

Command: `{cmd}`
Machine: {machine_line(data["machine"])}

Masked-diffusion objective, the preset's batch (tiny: 8 x 64 tokens, small: 16 x 256), tokens/s over the second half
of each run (tiny: 60 + 60 steps, eager fp32 the median of 3 runs; small: 4 + 4; the first half absorbs compilation
and warm-up).
"bare loop" is the same model, objective, clipping and AdamW step on pre-loaded batches with nothing else;
overhead = 1 - dlm / bare (negative: the trainer was faster, i.e. noise).

| preset | setting | dlm trainer tokens/s | bare loop tokens/s | trainer overhead |
| --- | --- | ---: | ---: | ---: |
{chr(10).join(rows)}
"""
    write_results("throughput", data, md)
    print(md)


if __name__ == "__main__":
    main()
