"""AR vs masked diffusion (MDLM) at the same size, data and number of training tokens.

    python bench/ar_vs_mdlm.py --preset small --max-steps 300 --out runs/ar_vs_mdlm

Trains both models with the CLI (skipped when a finished checkpoint exists), evaluates them on the whole validation
split (exact NLL for AR, the NELBO bound for MDLM with 4 Monte Carlo draws per sequence), draws a few samples of
each, and writes docs/bench/ar_vs_mdlm.json and its section of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402

PROMPTS = ["It is a truth universally acknowledged,", "Elizabeth walked into the room and"]
PUBLISHED = "1.21 on LM1B (<= 27.04 vs 22.32), 1.32 on OpenWebText (<= 23.21 vs 17.54)"


def dlm(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dlm.cli", *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--out", default="runs/ar_vs_mdlm")
    ap.add_argument("--num-samples", type=int, default=4, help="Monte Carlo draws per sequence for the MDLM bound")
    ap.add_argument("--gen-length", type=int, default=64)
    args = ap.parse_args()
    out = Path(args.out)
    results = {"machine": machine(), "preset": args.preset, "max_steps": args.max_steps, "models": {}}
    for objective in ("ar", "mdlm"):
        run = out / objective
        state = run / "checkpoint" / "trainer_state.json"
        if not (state.exists() and json.loads(state.read_text())["step"] >= args.max_steps):
            start = time.time()
            dlm(
                "train",
                "--preset",
                args.preset,
                "--objective",
                objective,
                "--max-steps",
                str(args.max_steps),
                "--out",
                str(run),
                "--quiet",
                "--resume",
                "--overwrite",  # (with --resume: start a new run when there is nothing to resume)
            )
            print(f"{objective}: trained in {time.time() - start:.0f} s", flush=True)
        trainer = json.loads(state.read_text())
        report = json.loads(dlm("eval", str(run), "--json", "--num-samples", str(args.num_samples)))
        samples = {}
        samplers = (
            [("ar", [])]
            if objective == "ar"
            else [
                ("ancestral", ["--steps", str(args.gen_length)]),
                ("confidence", ["--steps", str(args.gen_length), "--block-length", "16", "--temperature", "1.0"]),
            ]
        )
        for sampler, extra in samplers:
            samples[sampler] = []
            for i, prompt in enumerate(PROMPTS):
                text = dlm(
                    "sample",
                    str(run),
                    "--prompt",
                    prompt,
                    "--gen-length",
                    str(args.gen_length),
                    "--sampler",
                    sampler,
                    "--seed",
                    str(i),
                    *extra,
                )
                samples[sampler].append(text.split("\n", 1)[1].strip())
        results["models"][objective] = {
            "eval": report,
            "train_seconds": trainer["elapsed_seconds"],
            "tokens_seen": trainer["tokens_seen"],
            "samples": samples,
        }
        print(objective, json.dumps(report), flush=True)
    ar, md = results["models"]["ar"]["eval"], results["models"]["mdlm"]["eval"]
    results["ppl_ratio_mdlm_over_ar"] = md["ppl"] / ar["ppl"]
    cmd = f"python bench/ar_vs_mdlm.py --preset {args.preset} --max-steps {args.max_steps} --out {args.out}"
    rows = []
    for name, m in results["models"].items():
        e = m["eval"]
        rel = "<=" if e["is_bound"] else "="
        rows.append(
            f"| {name} | {m['tokens_seen']:,} | {m['train_seconds'] / 60:.1f} | {rel} {e['nats_per_token']:.3f} "
            f"| {rel} {e['ppl']:.1f} | {rel} {e['bits_per_byte']:.3f} |"
        )
    sample_md = []
    for name, m in results["models"].items():
        for sampler, texts in m["samples"].items():
            for t in texts:
                sample_md.append(f"- **{name} / {sampler}**: {t.replace(chr(10), ' ')}")
    md_text = f"""## AR vs masked diffusion (`{args.preset}`, same tokens)

Command: `{cmd}`
Machine: {machine_line(results["machine"])}

Validation = *Persuasion* ({ar["tokens"]:,} tokens). AR perplexity is exact; the MDLM figure is the NELBO upper bound
({md["mc_draws"]} Monte Carlo draws of t per sequence, antithetic, seed 0).

| model | training tokens | train minutes | nats/token | perplexity | bits/byte |
| --- | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

MDLM / AR perplexity ratio: **{results["ppl_ratio_mdlm_over_ar"]:.2f}** (published: {PUBLISHED}).

Samples ({args.gen_length} tokens; AR at temperature 1; MDLM ancestral at temperature 1 with {args.gen_length} steps,
and confidence with blocks of 16, {args.gen_length} steps, temperature 1):

{chr(10).join(sample_md)}
"""
    write_results("ar_vs_mdlm", results, md_text)
    print(md_text)


if __name__ == "__main__":
    main()
