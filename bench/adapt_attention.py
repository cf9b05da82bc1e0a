"""Which attention a few minutes of adaptation can afford: SmolLM2 adapted with the demo's recipe, two ways.

    python bench/adapt_attention.py [--steps 24] [--sequences 32] [--retrain]

Both runs are ``dlm demo``'s adaptation (``dlm train --init smollm2 --objective mdlm``, 4 x 128 tokens a step,
AdamW at 1e-4 after 4 warm-up steps, cosine decay, fp32, seed 0) and differ only in the attention:

- full: bidirectional attention annealed from causal over the first half of the steps (DiffuLLaMA; the recipe
  ``dlm demo`` used before);
- clean-causal (``--clean-causal``): unmasked tokens attend causally to the unmasked tokens, masked tokens to every
  unmasked token and to themselves, no annealing.

Each is measured at step 0 (the source's weights, no update) and after the run: the NELBO bound on the first
``--sequences`` windows of *Persuasion* (2 draws), and greedy samples of LLaDA's confidence sampler (32 tokens, 32
steps, blocks of 8, no cache). Runs are kept in runs/adapt_attention/ and reused (``--retrain`` to train again).
Writes docs/bench/adapt_attention.json and the ``adapt_attention`` section of docs/REAL_MODELS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402

import dlm  # noqa: E402
from dlm.data.packing import load_packed  # noqa: E402
from dlm.engine import Engine  # noqa: E402
from dlm.eval.likelihood import evaluate  # noqa: E402
from dlm.objectives import OBJECTIVES  # noqa: E402
from dlm.presets import preset_config  # noqa: E402
from dlm.train.adapt import init_config, init_model  # noqa: E402
from dlm.train.loop import train as run_training  # noqa: E402

PROMPTS = [
    "It is a truth universally acknowledged,",
    "Mr. Darcy looked at Elizabeth and",
    "The weather at Bath was",
    "Anne Elliot walked along the shore and",
]
ATTENTIONS = {"full (annealed)": False, "clean-causal": True}


def recipe(source: str, steps: int, clean_causal: bool):
    cfg = preset_config("small")
    cfg.train.objective, cfg.train.max_steps, cfg.train.seed = "mdlm", steps, 0
    init_config(cfg, source)
    cfg.model.clean_causal = clean_causal
    cfg.data.seq_len, cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps = 128, 4, 1e-4, 4
    cfg.train.anneal_steps = 0 if clean_causal else steps // 2
    cfg.train.log_every, cfg.train.eval_sequences = 4, 8
    return cfg


def measure(model, tokenizer, cfg, sequences: int) -> dict:
    model.eval()
    _, _, val = load_packed(cfg.data, tokenizer)
    t0 = time.perf_counter()
    report = evaluate(model, OBJECTIVES.build(cfg, tokenizer), val, tokenizer, num_samples=2, max_sequences=sequences)
    engine, samples = Engine(model, tokenizer, cfg), []
    for i, prompt in enumerate(PROMPTS):
        (r,) = engine.generate(
            [prompt], "confidence", i, gen_length=32, steps=32, block_length=8, temperature=0.0, stop_at_eos=False
        )
        samples.append({"prompt": prompt, "text": r.text, "tokens_per_sec": len(r.tokens) / r.seconds})
    return {
        "nats_per_token": report["nats_per_token"],
        "bits_per_byte": report["bits_per_byte"],
        "tokens": report["tokens"],
        "eval_seconds": time.perf_counter() - t0,
        "samples": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="smollm2")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--runs", type=Path, default=Path("runs/adapt_attention"))
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, clean_causal in ATTENTIONS.items():
        cfg = recipe(args.source, args.steps, clean_causal)
        model, tokenizer = init_model(cfg, "cpu")
        rows.append({"attention": name, "step": 0, **measure(model, tokenizer, cfg, args.sequences)})
        del model
        out = args.runs / ("clean-causal" if clean_causal else "full")
        state = out / "checkpoint" / "trainer_state.json"
        if args.retrain or not state.exists() or json.loads(state.read_text())["step"] != args.steps:
            t0 = time.perf_counter()
            run_training(recipe(args.source, args.steps, clean_causal), out, overwrite=True, progress=False)
            train_seconds = time.perf_counter() - t0
        else:
            train_seconds = None  # reused
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        elapsed = max((r.get("elapsed_seconds", 0.0) for r in log), default=0.0)
        model, tokenizer, cfg = dlm.load(out)
        rows.append(
            {
                "attention": name,
                "step": args.steps,
                "train_seconds": train_seconds,
                "train_elapsed_seconds": elapsed,
                **measure(model, tokenizer, cfg, args.sequences),
            }
        )
        print(json.dumps(rows[-2:], indent=1)[:2000])

    info = machine()
    command = "python bench/adapt_attention.py" + (f" --steps {args.steps}" if args.steps != 24 else "")
    lines = [
        "## Which attention a few minutes of adaptation can afford",
        "",
        f"`{command}` on {machine_line(info)}: SmolLM2-135M-Instruct adapted with `dlm demo`'s recipe "
        f"({args.steps} steps of 4 x 128 tokens, lr 1e-4, seed 0), full attention (annealed from causal over the "
        "first half) against clean-causal attention (`--clean-causal`). Likelihood: the NELBO bound on the first "
        f"{args.sequences} windows of *Persuasion*, 2 draws. Samples: confidence sampler, greedy, 32 tokens, 32 "
        "steps, blocks of 8, no cache.",
        "",
        "| attention | step | nats/token (bound) | bits/byte (bound) | training seconds |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        seconds = f"{r['train_elapsed_seconds']:.0f}" if r["step"] else "-"
        lines.append(
            f"| {r['attention']} | {r['step']} | <= {r['nats_per_token']:.3f} | <= {r['bits_per_byte']:.3f} | "
            f"{seconds} |"
        )
    for r in rows:
        lines += ["", f"**{r['attention']}, step {r['step']}**", ""]
        for s in r["samples"]:
            text = (s["prompt"] + s["text"]).replace("\n", " ").replace("|", "/")
            lines.append(f"- {text}  *({s['tokens_per_sec']:.1f} tokens/s)*")
    write_results("adapt_attention", {"machine": info, "steps": args.steps, "rows": rows}, "\n".join(lines),
                  document="REAL_MODELS.md")  # fmt: skip


if __name__ == "__main__":
    main()
