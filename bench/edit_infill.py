"""Instant Edit and infill quality: MDLM (both sides) vs AR (left context only), same backbone, data and tokens.

    python bench/edit_infill.py                     # 3 training seeds per objective, runs cached in runs/edit_infill
    python bench/edit_infill.py --seeds 1 --eval-seeds 3      # the committed results: 1 training seed, 3 draws
    python bench/edit_infill.py --quick --out /tmp/q --docs /tmp/q/docs     # the smoke test's tiny setting

Trains an AR and an MDLM model per seed (``dlm.train.loop.train``, the same Transformer size, the same batches of
the bundled Austen corpus: five novels; a finished run is reused unless ``--retrain``), then on sentences of the
validation novel (*Persuasion*):

- Instant Edit: 10% of each sentence's tokens (``corrupt``) replaced by random non-special tokens. MDLM:
  ``dlm.edit.edit_ids`` re-masks the K tokens with the lowest p(x^l | x^{-l}) (or those below P) and regenerates
  them (confidence sampler, greedy), for R rounds. AR, left context only (``ar_left_edit``): score every token by
  p(x^l | x^{<l}) in one causal pass, pick the K lowest (or those below P) by the same rule, then from left to right
  replace each picked token by the AR argmax given the (already repaired) tokens to its left. Oracle rows give both
  models the true corrupted positions. Reported: the fraction of corrupted tokens restored exactly, and the
  fraction of clean tokens changed.
- Infill: a span of 1, 3 or 6 tokens held out of a sentence. MDLM fills it from both sides (``infill_ids``,
  confidence sampler, greedy); AR continues the left side greedily for the same number of tokens. Exact match of
  the whole span, and bits/byte of the true span: AR's exact -log p(span | left); MDLM's conditional Monte Carlo
  NELBO (``conditional_masked_nelbo``: only the span masked, an upper bound) given both sides, and, to show what
  the right side is worth, the same given the left side only (the right side cut off).

Every number is the mean over the training seeds with its standard deviation (the sentences, corruptions and spans
are the same for every model; the seed also seeds the sampler and the NELBO draws).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402
from common import machine, machine_line  # noqa: E402

from dlm.data.corpus import load_corpus  # noqa: E402
from dlm.edit import edit_ids  # noqa: E402
from dlm.engine import Engine  # noqa: E402
from dlm.errors import DlmError  # noqa: E402
from dlm.objectives import conditional_masked_nelbo  # noqa: E402
from dlm.presets import preset_config  # noqa: E402

FULL = dict(d_model=128, n_layers=4, n_heads=4, d_ff=512, batch_size=32, steps=400, seeds=3, sentences=60)
QUICK = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, batch_size=4, steps=4, seeds=1, sentences=3)
SPAN_LENGTHS = (1, 3, 6)
FRACTION = 0.10  # of a sentence's tokens corrupted


# --- data ----------------------------------------------------------------------------------------------------------


def special_ids(tokenizer) -> set[int]:
    """The ids a corruption never writes (and never overwrites): EOS/BOS, mask, pad."""
    return {i for i in (tokenizer.eos_id, tokenizer.bos_id, tokenizer.mask_id, tokenizer.pad_id) if i is not None}


def corrupt(ids: list[int], vocab_size: int, special: set[int], generator: torch.Generator, fraction=FRACTION):
    """(corrupted ids, sorted corrupted positions): n = max(1, floor(fraction * len + 1/2)) positions, drawn without
    replacement among the non-special tokens, each replaced by a uniform draw from the non-special vocabulary other
    than the token it replaces."""
    candidates = [i for i, t in enumerate(ids) if t not in special]
    n = max(1, math.floor(fraction * len(ids) + 0.5))
    if n > len(candidates):
        raise DlmError(f"a sentence of {len(ids)} tokens has only {len(candidates)} non-special tokens to corrupt")
    order = torch.randperm(len(candidates), generator=generator)[:n]
    positions = sorted(candidates[i] for i in order.tolist())
    out = list(ids)
    for p in positions:
        while out[p] == ids[p] or out[p] in special:
            out[p] = int(torch.randint(vocab_size, (1,), generator=generator))
    return out, positions


def validation_sentences(tokenizer, n: int, seed: int, lo: int = 12, hi: int = 40) -> list[list[int]]:
    """``n`` sentences of *Persuasion* with lo..hi tokens, drawn with ``random.Random(seed)``."""
    text = " ".join(load_corpus("austen").val)
    pieces = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text)]
    ids = [tokenizer.encode(s) for s in pieces if s]
    ids = [x for x in ids if lo <= len(x) <= hi]
    return random.Random(seed).sample(ids, min(n, len(ids)))


# --- the AR baseline: left context only -----------------------------------------------------------------------------


@torch.no_grad()
def ar_left_log_probs(model, bos_id: int, ids: list[int]) -> torch.Tensor:
    """log p(. | x^{<l}) [L, V] of every position of ids under a causal model (one pass after the start token)."""
    x = torch.tensor([[bos_id] + list(ids[:-1])])  # (1, L)
    return F.log_softmax(model(x).double(), dim=-1)[0]  # (L, V)


def ar_left_edit(model, bos_id: int, ids: list[int], *, k=None, below=None, positions=None) -> list[int]:
    """The AR model's edit with left context only: the positions (given, or the ``k`` lowest / those below
    ``below`` of p(x^l | x^{<l}), ties: the leftmost) replaced from left to right by the argmax given the tokens to
    their left, earlier replacements included. Position l's decision reads ids[:l + 1] and nothing to its right."""
    if positions is None:
        log_p = ar_left_log_probs(model, bos_id, ids)  # (L, V)
        scores = log_p.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).exp()  # (L,)
        if below is not None:
            positions = (scores < below).nonzero().flatten().tolist()
        else:
            positions = scores.argsort(stable=True)[:k].tolist()
    out = list(ids)
    for p in sorted(positions):
        out[p] = int(ar_left_log_probs(model, bos_id, out[: p + 1])[p].argmax())
    return out


@torch.no_grad()
def ar_greedy(model, bos_id: int, left: list[int], n: int) -> list[int]:
    """n tokens continuing ``left`` greedily."""
    out = list(left)
    for _ in range(n):
        out.append(int(ar_left_log_probs(model, bos_id, out + [0])[-1].argmax()))
    return out[len(left) :]


# --- training ------------------------------------------------------------------------------------------------------


def run_config(objective: str, seed: int, size: dict):
    cfg = preset_config("tiny")  # seq_len 64, the 8k Austen BPE
    cfg.model.d_model, cfg.model.n_layers = size["d_model"], size["n_layers"]
    cfg.model.n_heads, cfg.model.d_ff = size["n_heads"], size["d_ff"]
    cfg.train.objective, cfg.train.seed, cfg.train.max_steps = objective, seed, size["steps"]
    cfg.train.batch_size, cfg.train.warmup_steps = size["batch_size"], max(1, size["steps"] // 20)
    cfg.train.log_every, cfg.train.eval_sequences = max(1, size["steps"] // 10), 16
    return cfg


def train_one(job: tuple) -> dict:
    """Train (or reuse) one run; return its trainer state."""
    from dlm.train.loop import train

    objective, seed, size, out, retrain = job
    torch.set_num_threads(1)
    state = Path(out) / "checkpoint" / "trainer_state.json"
    if retrain or not (state.exists() and json.loads(state.read_text())["step"] >= size["steps"]):
        train(run_config(objective, seed, size), out, resume=not retrain, overwrite=True, progress=False)
    return json.loads(state.read_text())


# --- evaluation ----------------------------------------------------------------------------------------------------


def edit_settings(n_corrupt: int) -> list[tuple[str, dict]]:
    """(row name, options) of the detection settings; K is in units of the true number of corruptions."""
    return [
        ("K = #corrupted, 1 round", dict(k=n_corrupt, rounds=1)),
        ("K = #corrupted, 3 rounds", dict(k=n_corrupt, rounds=3)),
        ("K = 2 x #corrupted, 1 round", dict(k=2 * n_corrupt, rounds=1)),
        ("p below 0.01, 1 round", dict(below=0.01, rounds=1)),
        ("oracle positions", dict(oracle=True, rounds=1)),
    ]


def tally(clean: list[int], corrupted: list[int], positions: list[int], edited: list[int]) -> tuple[int, int]:
    """(corrupted tokens restored exactly, clean tokens changed)."""
    bad = set(positions)
    repaired = sum(edited[p] == clean[p] for p in bad)
    changed = sum(edited[i] != corrupted[i] for i in range(len(clean)) if i not in bad)
    return repaired, changed


def evaluate_edit(engines: dict, sentences, corrupted, seed: int, settings=edit_settings) -> dict:
    """{objective: {setting: (repaired fraction, clean-changed fraction)}} of one training seed; ``settings``:
    n_corrupt -> [(row name, options)] (default: every row of ``edit_settings``)."""
    out = {}
    for objective, engine in engines.items():
        bos = engine.tokenizer.bos_id
        totals: dict[str, list[int]] = {}
        for n, (clean, (bad_ids, positions)) in enumerate(zip(sentences, corrupted)):
            for name, s in settings(len(positions)):
                k = min(s.get("k", 1), len(clean))
                if objective == "ar":
                    if s["rounds"] > 1:
                        continue  # AR's rule is one left-to-right pass (a second round rescores and repeats it)
                    edited = ar_left_edit(
                        engine.model, bos, bad_ids, k=k, below=s.get("below"),
                        positions=positions if s.get("oracle") else None,
                    )  # fmt: skip
                else:
                    opts = dict(positions=positions) if s.get("oracle") else (
                        dict(below=s["below"]) if "below" in s else dict(remask_k=k)
                    )  # fmt: skip
                    edited = edit_ids(engine, bad_ids, seed=seed + 1000 * n, rounds=s["rounds"], **opts).tokens
                r, c = tally(clean, bad_ids, positions, edited)
                t = totals.setdefault(name, [0, 0, 0, 0])
                t[0], t[1], t[2], t[3] = t[0] + r, t[1] + len(positions), t[2] + c, t[3] + len(clean) - len(positions)
        out[objective] = {name: (t[0] / t[1], t[2] / t[3]) for name, t in totals.items()}
    return out


def span_bytes(tokenizer, span: list[int]) -> int:
    return max(1, len(tokenizer.decode(span).encode("utf-8")))


def evaluate_infill(engines: dict, spans, seed: int, nelbo_samples: int) -> dict:
    """{row: {m: (exact-match fraction, bits/byte of the true span)}} of one training seed."""
    rows: dict[str, dict[int, list[float]]] = {}

    def add(row, m, exact, nats, nbytes):
        t = rows.setdefault(row, {}).setdefault(m, [0, 0, 0.0, 0])
        t[0], t[1], t[2], t[3] = t[0] + exact, t[1] + 1, t[2] + nats, t[3] + nbytes

    for n, (left, span, right) in enumerate(spans):
        m, nbytes = len(span), span_bytes(engines["ar"].tokenizer, span)
        ar = engines["ar"]
        bos = ar.tokenizer.bos_id
        guess = ar_greedy(ar.model, bos, left, m)
        log_p = ar_left_log_probs(ar.model, bos, left + span)[len(left) :]  # (m, V)
        nats = -float(log_p.gather(-1, torch.tensor(span)[:, None]).sum())
        add("AR, left side (exact)", m, guess == span, nats, nbytes)
        md = engines["mdlm"]
        for row, after in (("MDLM, both sides (NELBO bound)", right), ("MDLM, left side only (NELBO bound)", [])):
            fill = md.infill_ids([left, after], [m], seed=seed + 1000 * n)
            a, b = fill.holes[0]
            ids = [md.tokenizer.bos_id] + left + span + after  # the shifted model's start token, never masked
            target = torch.zeros(len(ids), dtype=torch.bool)
            target[1 + len(left) : 1 + len(left) + m] = True
            generator = torch.Generator().manual_seed(seed + 1000 * n)
            with torch.no_grad():
                bound = conditional_masked_nelbo(
                    md.model, torch.tensor(ids), target, mask_id=md.tokenizer.mask_id,
                    schedule=md.config.train.schedule, num_samples=nelbo_samples, generator=generator,
                )  # fmt: skip
            add(row, m, fill.tokens[a:b] == span, float(bound), nbytes)
    return {row: {m: (t[0] / t[1], t[2] / math.log(2) / t[3]) for m, t in by.items()} for row, by in rows.items()}


def held_out_spans(sentences, seed: int):
    """(left, span, right) per sentence and span length: the span starts uniformly where both sides keep >= 2
    tokens, drawn with ``random.Random(seed)``."""
    rng, out = random.Random(seed), []
    for ids in sentences:
        for m in SPAN_LENGTHS:
            if len(ids) < m + 4:
                continue
            a = rng.randint(2, len(ids) - m - 2)
            out.append((ids[:a], ids[a : a + m], ids[a + m :]))
    return out


# --- report --------------------------------------------------------------------------------------------------------


def spread(values: list[float], pct: bool = True) -> str:
    scale = 100 if pct else 1
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.1f}" if pct else f"{mean:.3f}"
    sd = statistics.stdev(values) * scale
    return f"{mean:.1f} ± {sd:.1f}" if pct else f"{mean:.3f} ± {sd:.3f}"


def markdown(results: dict, cmd: str) -> tuple[str, str]:
    seeds, size = results["seeds"], results["size"]
    runs = results["runs"]
    params = {o: runs[o][0]["parameters"] for o in ("ar", "mdlm")}
    tokens = {o: runs[o][0]["tokens_seen"] for o in ("ar", "mdlm")}
    minutes = {o: statistics.fmean(r["elapsed_seconds"] for r in runs[o]) / 60 for o in ("ar", "mdlm")}
    val = {o: spread([r["val_nats_per_token"] for r in runs[o]], pct=False) for o in ("ar", "mdlm")}
    setup = (
        f"Models: one Transformer shape for both ({size['n_layers']} layers, d = {size['d_model']}, "
        f"{size['n_heads']} heads, d_ff = {size['d_ff']}, context 64, the 8k Austen BPE): AR {params['ar']:,} and "
        f"MDLM {params['mdlm']:,} parameters, {size['steps']} steps of {size['batch_size']} x 64 tokens = "
        f"{tokens['ar']:,} training tokens each (AR {minutes['ar']:.1f} min, MDLM {minutes['mdlm']:.1f} min per run); "
        f"{len(seeds)} training seeds ({', '.join(map(str, seeds))}); validation nats/token (eval's 16 sequences): "
        f"AR = {val['ar']}, MDLM <= {val['mdlm']}. Cells: mean ± standard deviation over the {len(seeds)} training "
        f"seed(s) x {results['eval_seeds']} evaluation draw(s) (each draw: its own sentences, corruptions and spans)."
    )
    head = f"Command: `{cmd}`\nMachine: {machine_line(results['machine'])}\n\n{setup}\n"
    edit_rows = []
    for name, _ in edit_settings(1):
        for objective, label in (("mdlm", "MDLM (both sides)"), ("ar", "AR (left only)")):
            per_seed = [e[objective].get(name) for e in results["edit"]]
            if None in per_seed:
                continue
            edit_rows.append(
                f"| {name} | {label} | {spread([p[0] for p in per_seed])} | {spread([p[1] for p in per_seed])} |"
            )
    ne = results["edit_sentences"]
    edit_md = f"""## Instant Edit quality: repairing 10% random corruptions

{head}
{ne} validation sentences of *Persuasion* in all draws (12-40 tokens), 10% of each one's tokens (rounded half
up, at least one) replaced by a random non-special token ({results["corrupted_tokens"]} corrupted of
{results["edit_tokens"]} tokens). MDLM: `dlm.edit.edit_ids` (the token-level `Engine.edit`) re-masks the K tokens
with the lowest p(x^l | x^-l) (or those with p < 0.01) and regenerates them with the greedy confidence sampler, for the
rounds given. AR, left context only: every token scored by p(x^l | x^<l) in one causal pass, the same K lowest (or
p < 0.01) picked, then replaced from left to right by the AR argmax given the already repaired tokens to its
left (one pass; no 3-round row). "Oracle positions": both models are given the true corrupted positions
(MDLM: `positions=`, regenerated from both sides; AR: the left-to-right argmax), which isolates generation from
detection. Repaired: corrupted tokens restored exactly; clean changed: the other tokens that the edit changed.

| setting | model | repaired % | clean changed % |
| --- | --- | ---: | ---: |
{chr(10).join(edit_rows)}
"""
    infill_rows = []
    for row in results["infill"][0]:
        cells = []
        for m in SPAN_LENGTHS:
            per_seed = [r[row][m] for r in results["infill"]]
            cells.append(f"{spread([p[0] for p in per_seed])} | {spread([p[1] for p in per_seed], pct=False)}")
        infill_rows.append(f"| {row} | " + " | ".join(cells) + " |")
    counts = results["infill_spans"]
    counted = ", ".join(f"{counts[str(m)]} of {m}" for m in SPAN_LENGTHS)
    infill_md = f"""## Infill quality: a held-out span, both sides vs left side

{head}
From the same sentences, one span per sentence and length ({counted} tokens),
starting uniformly where both sides keep at least 2 tokens. Exact match: the whole span reproduced; MDLM fills
it with `Engine.infill_ids` (greedy confidence sampler, one token per step), AR continues the left side greedily.
Bits/byte: of the true span (total bits / total UTF-8 bytes of the spans). AR's figure is
exact, -log p(span | left). MDLM's is the conditional Monte Carlo NELBO (`conditional_masked_nelbo`, only the span
masked, {results["nelbo_samples"]} draws of t), an upper bound on -log p(span | both sides); the "left side only"
MDLM row cuts the right side off, to show what reading it is worth to the same model.

| model (context) | exact % (1) | bits/byte (1) | exact % (3) | bits/byte (3) | exact % (6) | bits/byte (6) |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(infill_rows)}
"""
    return edit_md, infill_md


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model, a few steps and sentences (the smoke test)")
    ap.add_argument("--out", default="runs/edit_infill", help="where the trained runs are kept")
    ap.add_argument("--docs", default=None, help="the docs folder written (default: the repository's docs/)")
    ap.add_argument("--retrain", action="store_true", help="train again even when a finished run exists")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None, help="training seeds (0, 1, ...)")
    ap.add_argument("--sentences", type=int, default=None)
    ap.add_argument("--eval-seeds", type=int, default=None, help="evaluation draws (sentences, corruptions, spans)")
    ap.add_argument("--nelbo-samples", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once (one thread each)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    size = dict(QUICK if args.quick else FULL)
    for key in ("steps", "seeds", "sentences"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if min(size["steps"], size["seeds"], size["sentences"], args.nelbo_samples, args.jobs, args.eval_seeds or 1) < 1:
        raise SystemExit("error: --steps, --seeds, --sentences, --nelbo-samples and --jobs must be at least 1")
    out = Path(args.out)
    seeds = list(range(size["seeds"]))
    jobs = [(o, s, size, str(out / f"{o}-seed{s}"), args.retrain) for s in seeds for o in ("ar", "mdlm")]
    start = time.time()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            states = list(pool.map(train_one, jobs))
    else:
        states = [train_one(job) for job in jobs]
    print(f"trained/loaded {len(jobs)} runs in {time.time() - start:.0f} s", flush=True)
    results = {"machine": machine(), "size": size, "seeds": seeds, "nelbo_samples": args.nelbo_samples}
    results["runs"] = {"ar": [], "mdlm": []}
    edits, infills, draws = [], [], {}
    for s in seeds:
        engines = {o: Engine.load(out / f"{o}-seed{s}") for o in ("ar", "mdlm")}
        for o, engine in engines.items():
            state = states[jobs.index((o, s, size, str(out / f"{o}-seed{s}"), args.retrain))]
            metrics = [json.loads(x) for x in (out / f"{o}-seed{s}" / "metrics.jsonl").read_text().splitlines()]
            val = [m["val_nats_per_token"] for m in metrics if "val_nats_per_token" in m][-1]
            results["runs"][o].append(
                {
                    "seed": s,
                    "parameters": sum(p.numel() for p in engine.model.parameters()),
                    "tokens_seen": state["tokens_seen"],
                    "elapsed_seconds": state["elapsed_seconds"],
                    "val_nats_per_token": val,
                }
            )
        for e in range(args.eval_seeds or 1):  # draw e: its own sentences, corruptions, spans (the same for all)
            if e not in draws:
                tok = engines["mdlm"].tokenizer
                sentences = validation_sentences(tok, size["sentences"], seed=1234 + e)
                generator = torch.Generator().manual_seed(1234 + e)
                corrupted = [corrupt(ids, tok.vocab_size, special_ids(tok), generator) for ids in sentences]
                draws[e] = sentences, corrupted, held_out_spans(sentences, seed=1234 + e)
            sentences, corrupted, spans = draws[e]
            t0 = time.time()
            edits.append(evaluate_edit(engines, sentences, corrupted, 100 * s + e))
            t1 = time.time()
            infills.append(evaluate_infill(engines, spans, 100 * s + e, args.nelbo_samples))
            print(f"seed {s}, draw {e}: edit {t1 - t0:.0f} s, infill {time.time() - t1:.0f} s", flush=True)
    results["eval_seeds"] = args.eval_seeds or 1
    sentences = [x for d in draws.values() for x in d[0]]
    corrupted = [x for d in draws.values() for x in d[1]]
    spans = [x for d in draws.values() for x in d[2]]
    results.update(edit=edits, infill=infills, edit_sentences=len(sentences))
    results["edit_tokens"] = sum(map(len, sentences))
    results["corrupted_tokens"] = sum(len(p) for _, p in corrupted)
    results["infill_spans"] = {str(m): sum(len(s[1]) == m for s in spans) for m in SPAN_LENGTHS}
    cmd = "python bench/edit_infill.py" + (" --quick" if args.quick else "")
    given = [k for k in ("steps", "seeds", "sentences", "eval_seeds") if getattr(args, k) is not None]
    cmd += "".join(f" --{k.replace('_', '-')} {getattr(args, k)}" for k in given)
    edit_md, infill_md = markdown(results, cmd)
    for name, data, md in (("edit_quality", {**results, "infill": None}, edit_md),
                           ("infill_quality", {**results, "edit": None}, infill_md)):  # fmt: skip
        common.write_results(name, data, md, document="CAPABILITIES.md", docs=args.docs)
    print(edit_md)
    print(infill_md)


if __name__ == "__main__":
    try:
        main()
    except DlmError as e:
        sys.exit(f"error: {e}")
