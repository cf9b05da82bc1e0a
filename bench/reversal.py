"""The reversal curse: facts trained in one direction, asked in both, AR vs masked diffusion (MDLM).

    python bench/reversal.py --seeds 0 1 2 --steps 2500

Facts: ``dlm.data.sft_tasks.people(n, seed)`` (person, mentor) pairs of generated names. Training sentences (whole
sentences, no prompt: the SFT loss on the whole row, so the MDLM model is trained to predict any masked part of the
sentence, AR every token from the left):

- every pair, forward: "The mentor of A is B.";
- the first ``--both`` pairs also reversed: "The mentee of B is A." (so both models know the reversed template and
  that it inverts the forward one; Berglund et al.'s setup);
- the other pairs (the test pairs) never appear reversed.

Questions on the test pairs, greedy decoding, exact match of the name:

- forward completion: "The mentor of A is" -> B (AR; MDLM with the confidence sampler, one block, on the training
  canvas: masks up to the rows' 18 tokens);
- reverse completion: "The mentee of B is" -> A (AR and MDLM): the fair AR query, a completion in the template it
  knows from the both-direction pairs;
- reverse infill (MDLM only, an AR model cannot condition on the right): "The mentor of[MASK*k] is B." with k the
  token length of " A" (given: an oracle length), the same sentence as in training with the other name masked, on
  the training canvas (EOS-padded to the rows' 18 tokens).

Runs are kept under ``--out`` (default runs/reversal, one folder per seed and setting) and reused when finished;
``--jobs N`` trains N seeds at once (one thread each). Writes docs/bench/reversal.json and its section of
docs/CAPABILITIES.md (``--out-docs`` elsewhere).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, write_results  # noqa: E402
from order_common import init_checkpoints, mean_spread, train_pair  # noqa: E402

from dlm.data.sft_tasks import people  # noqa: E402

GEN = 8  # tokens generated for a name and its full stop (the longest is 7 with the 512 BPE)
PAD_TO = 18  # MDLM rows: the sentence EOS-padded to this many tokens (the longest is 17)
QUESTIONS = ("forward", "reverse", "reverse-infill")


def forward(a: str, b: str) -> str:
    return f"The mentor of {a} is {b}."


def backward(a: str, b: str) -> str:
    return f"The mentee of {b} is {a}."


def facts(n: int, both: int, seed: int) -> tuple[list[dict], list[tuple[str, str]]]:
    """(training records, test pairs): every pair forward, the first ``both`` also reversed; the rest are tested."""
    pairs = people(n, seed)
    texts = [forward(a, b) for a, b in pairs] + [backward(a, b) for a, b in pairs[:both]]
    return [{"prompt": "", "response": t} for t in texts], pairs[both:]


def name_of(text: str) -> str:
    return text.split(".")[0].strip()


def mdlm_complete(md, prompts: list[str]) -> list:
    """MDLM completions on the training canvas: each prompt followed by masks up to the rows' ``PAD_TO`` tokens (at
    least ``GEN``), one token committed per step; prompts of one length share a batch, so no row is padded."""
    ids = [md.tokenizer.encode(p) for p in prompts]
    out = [None] * len(prompts)
    for n in sorted({len(i) for i in ids}):
        rows = [j for j, i in enumerate(ids) if len(i) == n]
        gen = max(GEN, PAD_TO - n)
        got = md.generate_ids([ids[j] for j in rows], "confidence", gen_length=gen, steps=gen, batch_size=64)
        for j, r in zip(rows, got):
            out[j] = r
    return out


def evaluate(engines: dict, test: list[tuple[str, str]]) -> dict[str, dict[str, list[bool]]]:
    ar, md = engines["ar"], engines["mdlm"]
    prompts = {
        "forward": [f"The mentor of {a} is" for a, _ in test],
        "reverse": [f"The mentee of {b} is" for _, b in test],
    }
    answers = {"forward": [b for _, b in test], "reverse": [a for a, _ in test]}
    out = {"ar": {}, "mdlm": {}}
    for q in ("forward", "reverse"):
        got_ar = ar.generate(prompts[q], "ar", gen_length=GEN, temperature=0.0, batch_size=64)
        got_md = mdlm_complete(md, prompts[q])
        out["ar"][q] = [name_of(r.text) == x for r, x in zip(got_ar, answers[q])]
        out["mdlm"][q] = [name_of(r.text) == x for r, x in zip(got_md, answers[q])]
    infill, tok = [], md.tokenizer
    for a, b in test:
        k = len(tok.encode(" " + a))
        left, right = tok.encode("The mentor of"), tok.encode(f" is {b}.")
        right += [tok.eos_id] * max(1, PAD_TO - len(left) - k - len(right))  # the training row's EOS padding
        result = md.infill_ids([left, right], [k], "confidence", steps=k)
        lo, hi = result.holes[0]
        infill.append(tok.decode(result.tokens[lo:hi]).strip() == a)
    out["mdlm"]["reverse-infill"] = infill
    return out


def run_seed(job: tuple) -> dict:
    seed, args = job
    torch.set_num_threads(1)
    setting = f"p{args.pairs}-b{args.both}-s{args.steps}-bs{args.batch_size}-lr{args.lr}-d{args.d_model}"
    work = Path(args.out) / f"seed{seed}-{setting}-l{args.n_layers}-v{args.vocab_size}"
    work.mkdir(parents=True, exist_ok=True)
    records, test = facts(args.pairs, args.both, seed)
    init = init_checkpoints(work, [r["response"] for r in records], vocab_size=args.vocab_size, max_seq_len=48,
                            d_model=args.d_model, n_layers=args.n_layers, seed=seed)  # fmt: skip
    trained = train_pair(work, init, records, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=seed,
                         pad_to=PAD_TO, reuse=not args.retrain)  # fmt: skip
    engines = {k: e for k, (e, _) in trained.items()}
    return {
        "seed": seed,
        "parameters": engines["ar"].model.num_parameters(),
        "training_sentences": len(records),
        "tokens_seen": {k: s["tokens_seen"] for k, (_, s) in trained.items()},
        "train_seconds": {k: s["elapsed_seconds"] for k, (_, s) in trained.items()},
        "test_pairs": len(test),
        "correct": evaluate(engines, test),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--both", type=int, default=40, help="pairs also trained in the reverse direction")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="a smoke run: a few steps, a few facts, one seed")
    ap.add_argument("--out-docs", default=None, help="write the JSON and Markdown under this folder, not docs/")
    ap.add_argument("--out", default="runs/reversal", help="where the trained runs are kept (and reused)")
    ap.add_argument("--retrain", action="store_true", help="train again even when a finished run exists")
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at once (one thread each)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.pairs, args.both, args.d_model, args.n_layers = [0], 4, 12, 4, 32, 1
        args.vocab_size = 300
    torch.set_num_threads(1)
    start, runs = time.time(), []
    jobs = [(seed, args) for seed in args.seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_seed, jobs))
    else:
        runs = [run_seed(job) for job in jobs]
    for r in runs:
        rates = {m: {q: f"{sum(v)}/{len(v)}" for q, v in qs.items()} for m, qs in r["correct"].items()}
        print(f"seed {r['seed']}: {rates}", flush=True)
    summary, rows = {}, []
    for model, questions in (("ar", ("forward", "reverse")), ("mdlm", QUESTIONS)):
        cells = []
        for q in QUESTIONS:
            if q not in questions:
                cells.append("n/a")
                continue
            rates = [100.0 * sum(r["correct"][model][q]) / r["test_pairs"] for r in runs]
            mean, sd = mean_spread(rates)
            summary.setdefault(model, {})[q] = {"mean": mean, "std": sd, "per_seed": rates}
            cells.append(f"{mean:.1f} ± {sd:.1f}")
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    info, first = machine(), runs[0]
    cmd = (
        f"python bench/reversal.py --seeds {' '.join(map(str, args.seeds))} --pairs {args.pairs} --both {args.both} "
        f"--steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} --d-model {args.d_model} "
        f"--n-layers {args.n_layers} --vocab-size {args.vocab_size}" + (" --quick" if args.quick else "")
    )
    data = {"machine": info, "args": vars(args), "runs": runs, "summary": summary, "seconds": time.time() - start}
    train_minutes = sum(sum(r["train_seconds"].values()) for r in runs) / 60
    md = f"""## Reversal: facts trained in one direction, asked in both

Command: `{cmd}`
Machine: {machine_line(info)}; training {train_minutes:.0f} min (one thread per run, summed over runs; a
finished run in `--out` is reused), this invocation {data["seconds"] / 60:.1f} min.

{args.pairs} generated (person, mentor) pairs; training = every pair as "The mentor of A is B." plus the first
{args.both} pairs also as "The mentee of B is A." ({first["training_sentences"]} sentences); the other
{first["test_pairs"]} pairs are tested. AR and MDLM of the same backbone ({first["parameters"]:,} parameters,
{args.n_layers} layers, d = {args.d_model}, the same BPE of {args.vocab_size} and initial weights), {args.steps} steps
of {args.batch_size} sentences (tokens seen per seed: AR {first["tokens_seen"]["ar"]:,}, MDLM
{first["tokens_seen"]["mdlm"]:,}: the MDLM rows are EOS-padded to {PAD_TO} tokens, its completion canvas). Exact
match of the name, greedy; forward = "The mentor of A is" -> B, reverse = "The mentee of B is" -> A, reverse infill
= "The mentor of [MASK x k] is B." -> A with k the true token length (MDLM only). Accuracy in % on the test pairs,
mean ± standard deviation over seeds {", ".join(map(str, args.seeds))} (facts and initial weights change with the
seed).

| model | forward | reverse (completion) | reverse (infill) |
| --- | ---: | ---: | ---: |
{chr(10).join(rows)}
"""
    write_results("reversal", data, md, document="CAPABILITIES.md", docs=args.out_docs)
    print(md)


if __name__ == "__main__":
    main()
