"""The adapted SmolLM2 against its source: likelihood on Persuasion, samples, and infilling. Writes
docs/bench/real_models.json and the ``real_models`` section of docs/REAL_MODELS.md.

    bash bench/adapt_smollm2.sh                        # the adaptation run (resumable chunks), runs/smol-mdlm
    python bench/real_models.py                        # this report: runs/smol-mdlm against smollm2
    python bench/real_models.py --adapted RUN --source PATH --sequences 64 --draws 4

Likelihood: the first ``--sequences`` validation sequences (256 tokens of *Persuasion*, the held-out novel, in
SmolLM2's tokenizer), the adapted model's NELBO bound (``--draws`` Monte Carlo draws each) beside the source AR
model's exact NLL, both as bits per byte of the same text. Infilling: a span of ``--span`` tokens is masked in a
validation window; the diffusion model sees both sides and fills it with the confidence sampler through
``Engine.infill_ids`` (one token per step, greedy), the AR model sees only the left context and continues
greedily for as many tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402

import dlm  # noqa: E402
from dlm.data.packing import load_packed  # noqa: E402
from dlm.engine import Engine, render  # noqa: E402
from dlm.eval.likelihood import evaluate  # noqa: E402
from dlm.objectives import OBJECTIVES  # noqa: E402

PROMPTS = [
    "It is a truth universally acknowledged, that",
    "Anne Elliot walked along the shore and",
    "The weather at Bath was",
    "Mr. Darcy looked at Elizabeth and said",
]


def likelihood(model, tokenizer, cfg, val, sequences, draws, seed):
    objective = OBJECTIVES.build(cfg, tokenizer)
    start = time.perf_counter()
    report = evaluate(model, objective, val, tokenizer, num_samples=draws, seed=seed, max_sequences=sequences)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["draws"] = draws if objective.is_bound else None
    return report


def samples(engine, sampler, options, gen_length, seed):
    out = []
    for i, prompt in enumerate(PROMPTS):
        (r,) = engine.generate([prompt], sampler, seed + i, gen_length=gen_length, stop_at_eos=False, **options)
        out.append({"prompt": prompt, "text": r.text, "nfe": r.nfe, "tokens_per_sec": len(r.tokens) / r.seconds})
    return out


def infill(adapted, source, val, span, left, right, windows, seed):
    """Mask ``span`` tokens after ``left`` of context in ``windows`` validation windows; both models fill them."""
    diffusion, ar = Engine(*adapted), Engine(*source)
    tok = diffusion.tokenizer
    results = []
    for k in range(windows):
        row = val.batch([k * 7 + 1])[0].tolist()  # spread over the book
        n_left = min(left, (len(row) - span) // 2)  # short sequences: the span in the middle
        n_right = min(right, len(row) - n_left - span)
        before, truth = row[:n_left], row[n_left : n_left + span]
        after = row[n_left + span : n_left + span + n_right]
        r = diffusion.infill_ids([before, after], [span], "confidence", seed + k, steps=span, temperature=0.0)
        filled = r.tokens[n_left : n_left + span]
        (cont,) = ar.generate_ids([before], "ar", seed + k, gen_length=span, stop_at_eos=False, temperature=0.0)
        results.append(
            {
                "left": render(tok, before),
                "right": render(tok, after),
                "truth": render(tok, truth),
                "diffusion": render(tok, filled),
                "ar": render(tok, cont.tokens),
                "diffusion_token_accuracy": sum(a == b for a, b in zip(filled, truth)) / span,
                "ar_token_accuracy": sum(a == b for a, b in zip(cont.tokens, truth)) / span,
                "diffusion_seconds": round(r.seconds, 2),
            }
        )
    return results


def markdown(data) -> str:
    m, lk = data["machine"], data["likelihood"]
    a, s = lk["adapted"], lk["source"]
    lines = [
        "## Measured: the adapted SmolLM2 against its source",
        "",
        f"`{data['command']}` on {machine_line(m)}; adapted run `{data['adapted']}` "
        f"(step {data['adapted_step']}, attention annealing at {data['anneal']:.0%} of the way to full).",
        "",
        f"### Likelihood on *Persuasion* (first {a['sequences']} sequences, {a['tokens']} tokens)",
        "",
        "| model | nats/token | perplexity | bits/byte | seconds |",
        "|---|---|---|---|---|",
        f"| adapted (mdlm, {a['draws']} draws: an upper bound) | <= {a['nats_per_token']:.3f} | <= {a['ppl']:.1f} | "
        f"<= {a['bits_per_byte']:.3f} | {a['seconds']} |",
        f"| SmolLM2-135M-Instruct (AR, exact) | {s['nats_per_token']:.3f} | {s['ppl']:.1f} | "
        f"{s['bits_per_byte']:.3f} | {s['seconds']} |",
        "",
        "### Samples",
        "",
    ]
    for name, rows in data["samples"].items():
        lines += [f"**{name}**", ""]
        for r in rows:
            text = (r["prompt"] + r["text"]).replace("\n", " ")
            lines.append(f"- {text}  *(NFE {r['nfe']}, {r['tokens_per_sec']:.1f} tokens/s)*")
        lines.append("")
    lines += [
        f"### Infilling ({data['span']} masked tokens; the AR model sees only the left context)",
        "",
        "| left context | truth | adapted (both sides) | SmolLM2 (left only) |",
        "|---|---|---|---|",
    ]
    for r in data["infill"]:
        cells = [("…" + r["left"][-60:]), r["truth"], r["diffusion"], r["ar"]]
        lines.append("| " + " | ".join(c.replace("\n", " ").replace("|", "\\|") for c in cells) + " |")
    acc_d = sum(r["diffusion_token_accuracy"] for r in data["infill"]) / len(data["infill"])
    acc_a = sum(r["ar_token_accuracy"] for r in data["infill"]) / len(data["infill"])
    lines += ["", f"Token accuracy against the original span: adapted {acc_d:.0%}, SmolLM2 {acc_a:.0%}."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapted", default="runs/smol-mdlm")
    p.add_argument("--source", default="smollm2")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--gen-length", type=int, default=48)
    p.add_argument("--span", type=int, default=6)
    p.add_argument("--windows", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import json

    adapted = dlm.load(args.adapted)
    source = dlm.load(args.source)
    _, _, val = load_packed(adapted[2].data, adapted[1])
    state = json.loads((Path(args.adapted) / "checkpoint" / "trainer_state.json").read_text())
    cfg = adapted[2]
    anneal = 1.0 if not cfg.train.anneal_steps else min(1.0, state["step"] / cfg.train.anneal_steps)
    data = {
        "command": "python bench/real_models.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "adapted": args.adapted,
        "adapted_step": state["step"],
        "anneal": anneal,
        "span": args.span,
    }
    print("likelihood ...", flush=True)
    data["likelihood"] = {
        "adapted": likelihood(*adapted, val, args.sequences, args.draws, args.seed),
        "source": likelihood(*source, val, args.sequences, 1, args.seed),
    }
    print(json.dumps(data["likelihood"], indent=1), flush=True)
    print("samples ...", flush=True)
    g = args.gen_length
    data["samples"] = {
        f"adapted, confidence sampler (greedy, {g} steps, blocks of 16)": samples(
            Engine(*adapted), "confidence", dict(steps=g, block_length=16), g, args.seed
        ),
        "adapted, confidence sampler with threshold 0.9 (Fast-dLLM, blocks of 16)": samples(
            Engine(*adapted), "confidence", dict(steps=g, block_length=16, threshold=0.9), g, args.seed
        ),
        "SmolLM2-135M-Instruct, greedy with its KV cache": samples(
            Engine(*source), "ar", dict(temperature=0.0), g, args.seed
        ),
    }
    print("infill ...", flush=True)
    data["infill"] = infill(adapted, source, val, args.span, 24, 16, args.windows, args.seed)
    write_results("real_models", data, markdown(data), document="REAL_MODELS.md")
    print(markdown(data))


if __name__ == "__main__":
    main()
