"""The discrete family side by side: AR, MDLM, SEDD (absorb, uniform), UDLM, BD3-LM (k = 4, 16) and Eso-LM (B,
alpha0 = 1, 0.5, 0.125), each trained as `small` on the bundled corpus for the same number of tokens.

    python bench/discrete_family.py --max-steps 40 --out runs/discrete            # train, evaluate, sample, write
    python bench/discrete_family.py --max-steps 40 --out runs/discrete --stage train   # only train (resumable)
    python bench/discrete_family.py --max-steps 40 --out runs/discrete --stage time    # re-time, machine quiet

Every model: `dlm train --preset small --objective ... --max-steps N --set train.warmup_steps=W` (skipped when a
finished checkpoint exists), `dlm eval --json --num-samples D` on the whole validation split (exact NLL for AR, the
objective's bound otherwise), then `--samples` unconditional samples of `--gen-length` tokens drawn one at a time
(batch 1, sample i with seed i) with the model's own sampler and one denoising step per token (`--steps` =
gen-length: AR decodes one token per call; BD3-LM spreads the steps over its blocks; Eso-LM's diffusion phase
runs on that grid and its sequential phase decodes the rest), timed after one untimed warm-up. Quality of the
samples: generative perplexity under `--reference` (SmolLM2-135M by default, `make bench-deps`) and the mean
unigram entropy of a sample (nats, over our token ids). A reference row, `unigram`, is the context-free model:
the add-one-smoothed token frequencies of the training split (its validation NLL is exact; its samples are
--samples draws of --gen-length i.i.d. tokens from it, seed i): a model near it has learned little beyond which
tokens are frequent. Results: docs/bench/discrete_family.json and the `discrete_family` section of
docs/RESULTS.md. A model's evaluation is cached in its run folder (bench.json) and
redone only with --redo.
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

# name -> (dlm train arguments, sampler)
MODELS = {
    "ar": (["--objective", "ar"], "ar"),
    "mdlm": (["--objective", "mdlm"], "ancestral"),
    "sedd-absorb": (["--objective", "sedd", "--graph", "absorb"], "sedd-analytic"),
    "sedd-uniform": (["--objective", "sedd", "--graph", "uniform"], "sedd-analytic"),
    "udlm": (["--objective", "udlm"], "udlm"),
    "bd3lm-k4": (["--objective", "bd3lm", "--block-size", "4"], "block"),
    "bd3lm-k16": (["--objective", "bd3lm", "--block-size", "16"], "block"),
    "esolm-B-1": (["--objective", "esolm", "--alpha0", "1", "--variant", "B"], "esolm"),
    "esolm-B-0.5": (["--objective", "esolm", "--alpha0", "0.5", "--variant", "B"], "esolm"),
    "esolm-B-0.125": (["--objective", "esolm", "--alpha0", "0.125", "--variant", "B"], "esolm"),
}
PUBLISHED = (
    "LM1B / OpenWebText (AR < BD3-LM k=4 < BD3-LM k=16 < MDLM < SEDD < UDLM in perplexity; Eso-LM moves "
    "from MDLM's towards AR's as alpha0 falls)"
)


def dlm(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dlm.cli", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"dlm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def train(name: str, run: Path, args) -> dict:
    state = run / "checkpoint" / "trainer_state.json"
    if not (state.exists() and json.loads(state.read_text())["step"] >= args.max_steps):
        start = time.time()
        dlm(
            "train",
            "--preset",
            args.preset,
            *MODELS[name][0],
            "--max-steps",
            str(args.max_steps),
            "--out",
            str(run),
            "--seed",
            "0",
            "--set",
            f"train.warmup_steps={args.warmup}",
            "--quiet",
            "--resume",
            "--overwrite",  # (with --resume: start a new run when there is nothing to resume)
        )
        print(f"{name}: trained in {time.time() - start:.0f} s", flush=True)
    return json.loads(state.read_text())


def timed_samples(name: str, run: Path, args, count: int) -> tuple[list[list[int]], list[float], object]:
    """``count`` unconditional samples at batch 1 (sample i with seed i) with the model's own sampler, temperature
    1 where it has one, one step per token, and their wall-clock seconds, after one untimed warm-up."""
    import torch

    from dlm.engine import Engine
    from dlm.samplers import SAMPLERS, user_fields

    engine = Engine.load(run)
    sampler = MODELS[name][1]
    takes = user_fields(SAMPLERS.get(sampler).config)
    options = {k: v for k, v in {"steps": args.gen_length, "temperature": 1.0}.items() if k in takes}
    run_once = lambda seed, length, **kw: engine.generate_ids(  # noqa: E731
        [[]], sampler, seed, gen_length=length, stop_at_eos=False, **kw
    )[0]
    with torch.inference_mode():
        run_once(10_000, 16, **{k: 16 if k == "steps" else v for k, v in options.items()})  # warm-up
        results = [run_once(i, args.gen_length, **options) for i in range(count)]
    return [r.tokens for r in results], [r.seconds for r in results], engine.tokenizer


def quality(samples: list[list[int]], tokenizer, reference) -> dict:
    """Generative perplexity of the decoded samples under ``reference``, their mean unigram entropy over the ids
    other than the special ones, and the start of the first two."""
    from dlm.eval.generative import generative_perplexity, unigram_entropy

    special = {tokenizer.eos_id, tokenizer.mask_id, tokenizer.pad_id}
    texts = [tokenizer.decode([t for t in s if t != tokenizer.mask_id]) for s in samples]
    words = [[t for t in s if t not in special] for s in samples]
    return {
        "gen_ppl": generative_perplexity(reference, texts),
        "entropy": unigram_entropy(words),
        "examples": [t[:300].replace("\n", " ") for t in texts[:2]],
    }


def sample(name: str, run: Path, args, reference) -> dict:
    """``args.samples`` unconditional samples at batch 1, timed; their gen-PPL and entropy."""
    samples, seconds, tokenizer = timed_samples(name, run, args, args.samples)
    return {
        "sampler": MODELS[name][1],
        "steps": args.gen_length,
        "seconds_per_sample": sum(seconds) / len(seconds),
        "seconds": seconds,
        **quality(samples, tokenizer, reference),
    }


def unigram_reference(run: Path, args, reference) -> dict:
    """The context-free baseline on the same tokens: add-one-smoothed training-split token frequencies (no mass on
    the mask and pad ids), its exact NLL on the validation sequences that ``dlm eval`` scores, and samples drawn
    from it."""
    import math

    import numpy as np
    import torch

    import dlm as dlm_api
    from dlm.data.packing import load_packed

    _, tokenizer, cfg = dlm_api.load(run)
    _, train_set, val_set = load_packed(cfg.data, tokenizer)
    counts = np.bincount(np.asarray(train_set.tokens), minlength=cfg.model.vocab_size).astype(np.float64) + 1.0
    counts[[tokenizer.mask_id, tokenizer.pad_id]] = 0.0
    p = counts / counts.sum()
    with np.errstate(divide="ignore"):  # -inf for the mask and pad ids, which no data token is
        log_p = np.log(p)
    tokens = len(val_set) * val_set.seq_len
    val = np.asarray(val_set.tokens[:tokens])
    nats = float(-log_p[val].sum())
    text_bytes = len(tokenizer.decode(val).encode("utf-8"))
    probs = torch.from_numpy(p)
    samples = [
        torch.multinomial(probs, args.gen_length, replacement=True, generator=torch.Generator().manual_seed(i)).tolist()
        for i in range(args.samples)
    ]
    return {
        "eval": {
            "objective": "unigram",
            "nats_per_token": nats / tokens,
            "ppl": math.exp(nats / tokens),
            "bits_per_byte": nats / math.log(2) / text_bytes,
            "is_bound": False,
            "tokens": tokens,
            "bytes": text_bytes,
            "mc_draws": 0,
        },
        "sample": {"sampler": "i.i.d. draws", **quality(samples, tokenizer, reference)},
    }


def render(results: dict, args, defaults: dict) -> str:
    """The Markdown section; ``defaults`` (the parser's) tell which options the printed command must carry."""
    cmd = f"python bench/discrete_family.py --max-steps {args.max_steps} --out {args.out}"
    for key in ("preset", "warmup", "num_samples", "samples", "gen_length", "reference", "only", "section"):
        value = getattr(args, key)
        if value != defaults[key]:
            cmd += f" --{key.replace('_', '-')} " + (" ".join(value) if isinstance(value, list) else str(value))
    rows = []
    for name, m in results["models"].items():
        e, s = m["eval"], m["sample"]
        rel = "<=" if e["is_bound"] else "="
        rows.append(
            f"| {name} | {m['tokens_seen']:,} | {m['train_seconds'] / 60:.1f} | {rel} {e['ppl']:.1f} "
            f"| {rel} {e['bits_per_byte']:.3f} | {s['gen_ppl']:.1f} | {s['entropy']:.2f} | {s['sampler']} "
            f"| {s['seconds_per_sample']:.2f} |"
        )
    if "unigram" in results:
        e, s = results["unigram"]["eval"], results["unigram"]["sample"]
        rows.append(
            f"| unigram (reference) | training counts | - | = {e['ppl']:.1f} | = {e['bits_per_byte']:.3f} "
            f"| {s['gen_ppl']:.1f} | {s['entropy']:.2f} | {s['sampler']} | - |"
        )
    examples = [f"- **{name}**: {m['sample']['examples'][0]}" for name, m in results["models"].items()]
    any_eval = next(iter(results["models"].values()))["eval"]
    draws = max(m["eval"].get("mc_draws", 0) for m in results["models"].values())
    return f"""## The discrete family side by side (`{args.preset}`, {args.max_steps} steps of training each)

Command: `{cmd}`
Machine: {machine_line(results["machine"])}

Every model is the same `{args.preset}` backbone (17M parameters for `small`) trained on the bundled Austen corpus for
{args.max_steps} steps of 16 x 256 tokens (warm-up {args.warmup} steps, then cosine; seed 0). Validation =
*Persuasion* ({any_eval["tokens"]:,} tokens): `=` exact (AR), `<=` the objective's bound ({draws}
Monte Carlo draws per sequence). Samples: {args.samples} unconditional samples of {args.gen_length} tokens per
model at batch 1 (seed i for sample i, temperature 1, {args.gen_length} denoising steps), generative perplexity
under {results["reference"]} and mean unigram entropy (nats; a degenerate, repetitive sample has a low one); time
= wall-clock seconds per {args.gen_length}-token sample, one sample at a time, after a warm-up. `unigram` is the
context-free reference: the add-one-smoothed token frequencies of the training split (exact NLL; i.i.d. samples).

| model | training tokens | train minutes | val perplexity | bits/byte | gen PPL | entropy | sampler | s / sample |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |
{chr(10).join(rows)}

Published ordering: {PUBLISHED}.

First sample of each model (first 300 characters):

{chr(10).join(examples)}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="model preset (tiny: a quick check of the script)")
    ap.add_argument("--max-steps", type=int, default=40, help="training steps of 16 x 256 tokens per model")
    ap.add_argument("--warmup", type=int, default=4, help="learning-rate warm-up steps")
    ap.add_argument("--out", default="runs/discrete")
    ap.add_argument(
        "--section",
        default="discrete_family",
        help="results name: docs/bench/SECTION.json and that section of docs/RESULTS.md",
    )
    ap.add_argument(
        "--only",
        nargs="*",
        default=list(MODELS),
        choices=list(MODELS),
        metavar="NAME",
        help=f"models to run (default all): {', '.join(MODELS)}",
    )
    ap.add_argument(
        "--stage",
        choices=("train", "all", "time"),
        default="all",
        help="train: only train; all: train, evaluate, sample and write; time: re-time the sampling of "
        "models already evaluated (run it with nothing else on the machine) and rewrite",
    )
    ap.add_argument("--time-samples", type=int, default=2, help="--stage time: timed samples per model")
    ap.add_argument("--num-samples", type=int, default=2, help="Monte Carlo draws per sequence for the bounds")
    ap.add_argument("--samples", type=int, default=6, help="timed unconditional samples per model")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--reference", default="smollm2", help="reference LM for generative perplexity")
    ap.add_argument("--redo", action="store_true", help="re-evaluate and re-sample models already done")
    args = ap.parse_args()
    out = Path(args.out)
    for name in args.only:
        train(name, out / name, args)
    if args.stage == "train":
        return
    from dlm.eval.generative import load_reference

    reference = load_reference(args.reference)
    results = {"machine": machine(), "reference": args.reference, "max_steps": args.max_steps, "models": {}}
    for name in args.only:
        run = out / name
        cached = run / "bench.json"
        if args.stage == "time":
            entry = json.loads(cached.read_text())
            seconds = timed_samples(name, run, args, args.time_samples)[1]
            entry["sample"].update(seconds=seconds, seconds_per_sample=sum(seconds) / len(seconds), retimed=True)
            cached.write_text(json.dumps(entry, indent=2) + "\n")
            results["models"][name] = entry
            print(name, f"{entry['sample']['seconds_per_sample']:.2f} s per sample", flush=True)
            continue
        if cached.exists() and not args.redo:
            results["models"][name] = json.loads(cached.read_text())
            continue
        trainer = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
        report = json.loads(dlm("eval", str(run), "--json", "--num-samples", str(args.num_samples)))
        entry = {
            "eval": report,
            "train_seconds": trainer["elapsed_seconds"],
            "tokens_seen": trainer["tokens_seen"],
            "sample": sample(name, run, args, reference),
        }
        cached.write_text(json.dumps(entry, indent=2) + "\n")
        results["models"][name] = entry
        print(name, json.dumps({k: v for k, v in entry["sample"].items() if k != "seconds"}), flush=True)
    results["unigram"] = unigram_reference(out / args.only[0], args, reference)  # the runs share data and tokenizer
    md = render(results, args, vars(ap.parse_args([])))
    write_results(args.section, results, md)
    print(md)


if __name__ == "__main__":
    main()
