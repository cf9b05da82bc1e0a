"""Infill and Instant Edit with a real model: SmolLM2-135M-Instruct adapted to masked diffusion with clean-causal
attention, against its AR source, on sentences of *Persuasion* (the held-out novel).

    dlm train --init smollm2 --objective mdlm --clean-causal --max-steps 100 --batch-size 8 --lr 1e-4 \\
        --set data.seq_len=128 --set train.warmup_steps=10 --time-limit 45 --out runs/smol-cc
    python bench/smol_capabilities.py --model runs/smol-cc                   # the committed results
    python bench/smol_capabilities.py --model ~/.cache/dlm/demo/smol-clean-causal   # `make demo`'s model

The same measurements as bench/edit_infill.py (its functions, imported), with the two models given instead of
trained: Instant Edit of sentences with 10% of their tokens replaced at random (repaired vs clean tokens changed,
the AR model with its left context only), and infill of a held-out span of 1, 3 or 6 tokens (exact match, and
bits/byte: AR's exact -log p(span | left) against the adapted model's conditional NELBO given both sides, and
given the left side only). Unlike edit_infill.py's pair, these two models do not share training tokens: the adapted
model is the source plus a short adaptation, so the table says what that adaptation buys, not which objective is
better at equal cost. A few examples of each go beside the tables.

Writes docs/bench/smol_edit_infill.json and its section of docs/CAPABILITIES.md (``--docs`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import common  # noqa: E402
import edit_infill as study  # noqa: E402
from common import machine, machine_line  # noqa: E402

from dlm.edit import edit_ids, word_diff  # noqa: E402
from dlm.engine import Engine  # noqa: E402
from dlm.errors import DlmError  # noqa: E402
from dlm.train import checkpoint as ckpt  # noqa: E402


def settings(n_corrupt: int) -> list[tuple[str, dict]]:
    """The detection settings measured here (a scoring pass of a 135M model per sentence and setting is what
    costs): bench/edit_infill.py's rows without the 3-round and 2K ones."""
    keep = ("K = #corrupted, 1 round", "p below 0.01, 1 round", "oracle positions")
    return [(name, s) for name, s in study.edit_settings(n_corrupt) if name in keep]


def load_pair(model: str, source: str) -> dict[str, Engine]:
    """{"ar": the source, "mdlm": the adapted model}, checked to be what they claim and to share a tokenizer."""
    engines = {"ar": Engine.load(source), "mdlm": Engine.load(model)}
    for role, objective in (("ar", "ar"), ("mdlm", "mdlm")):
        got = engines[role].config.train.objective
        if got != objective:
            which = "--source" if role == "ar" else "--model"
            raise DlmError(f"{which} must be an {objective} model, got objective {got!r}")
    probe = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    if engines["ar"].tokenizer.encode(probe) != engines["mdlm"].tokenizer.encode(probe):
        raise DlmError("--model and --source tokenize text differently: the adapted model must come from the source")
    return engines


def text_of(tok, ids: list[int]) -> str:
    """Decoded ids on one line, safe in a Markdown table cell."""
    return tok.decode(ids).replace("\n", " ").replace("|", "\\|")


def infill_examples(engines: dict, spans, seed: int, n: int) -> list[dict]:
    """The first ``n`` spans of 3 tokens: the truth, AR's left-side continuation and the adapted model's fill."""
    tok, out = engines["mdlm"].tokenizer, []
    for i, (left, span, right) in enumerate(s for s in spans if len(s[1]) == 3):
        if i == n:
            break
        ar = study.ar_greedy(engines["ar"].model, engines["ar"].tokenizer.bos_id, left, len(span))
        fill = engines["mdlm"].infill_ids([left, right], [len(span)], seed=seed + i)
        a, b = fill.holes[0]
        out.append(
            {
                "left": text_of(tok, left), "right": text_of(tok, right), "truth": text_of(tok, span),
                "ar": text_of(tok, ar), "mdlm": text_of(tok, fill.tokens[a:b]),
            }
        )  # fmt: skip
    return out


def edit_examples(engines: dict, sentences, corrupted, seed: int, n: int) -> list[dict]:
    """The first ``n`` sentences: the corrupted text, and each model's edit of its K = #corrupted lowest tokens."""
    tok, out = engines["mdlm"].tokenizer, []
    for i, (clean, (bad, positions)) in enumerate(zip(sentences[:n], corrupted[:n])):
        ar = study.ar_left_edit(engines["ar"].model, engines["ar"].tokenizer.bos_id, bad, k=len(positions))
        md = edit_ids(engines["mdlm"], bad, seed=seed + 1000 * i, remask_k=len(positions)).tokens
        bad_text = text_of(tok, bad)
        out.append(
            {
                "clean": text_of(tok, clean), "corrupted": bad_text,
                "ar": word_diff(bad_text, text_of(tok, ar)), "mdlm": word_diff(bad_text, text_of(tok, md)),
            }
        )  # fmt: skip
    return out


def se(p: float, n: int) -> float:
    """The binomial standard error of a proportion p of n."""
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def markdown(data: dict, cmd: str) -> str:
    n_bad, n_clean = data["corrupted_tokens"], data["edit_tokens"] - data["corrupted_tokens"]
    labels = {"mdlm": "adapted (both sides)", "ar": "SmolLM2 AR (left only)"}
    edit_rows = []
    for name, _ in settings(1):
        for objective in ("mdlm", "ar"):
            if name in data["edit"][objective]:
                r, c = data["edit"][objective][name]
                edit_rows.append(
                    f"| {name} | {labels[objective]} | {100 * r:.1f} ± {100 * se(r, n_bad):.1f} | "
                    f"{100 * c:.1f} ± {100 * se(c, n_clean):.1f} |"
                )
    counts = data["infill_spans"]
    infill_rows = []
    for row, by in data["infill"].items():
        label = row.replace("MDLM", "adapted").replace("AR,", "SmolLM2 AR,")
        cells = [
            f"{100 * by[str(m)][0]:.1f} ± {100 * se(by[str(m)][0], counts[str(m)]):.1f} | {by[str(m)][1]:.3f}"
            for m in study.SPAN_LENGTHS
        ]
        infill_rows.append(f"| {label} | " + " | ".join(cells) + " |")
    infill_ex = "\n".join(
        f"| …{e['left'][-40:]} **[{e['truth']}]** {e['right'][:30]}… | {e['ar']} | {e['mdlm']} |"
        for e in data["infill_examples"]
    )
    edit_ex = "\n".join(
        f"- corrupted: {e['corrupted']}\n  - adapted: {e['mdlm']}\n  - SmolLM2 AR: {e['ar']}\n  - clean: {e['clean']}"
        for e in data["edit_examples"]
    )
    m = data["models"]
    named = " (SmolLM2-135M-Instruct)" if m["source"] == "smollm2" else ""
    against = "its AR source" if m["source"] == "smollm2" else f"an AR model given as --source, `{m['source']}`"
    difference = (
        "The adapted model's extra training is all the difference: this measures what a short adaptation buys, not "
        "the two objectives at equal cost."
        if m["source"] == "smollm2"
        else "The AR model is the other side of the comparison as given (the fair control: the source fine-tuned as "
        "AR on the same tokens); the sentences, corruptions and spans are those of any other run with this seed."
    )
    return f"""## Infill and Instant Edit with a real model: adapted SmolLM2 against {against}

Command: `{cmd}`
Machine: {machine_line(data["machine"])}; {data["seconds"] / 60:.1f} min.

Models: the AR source `{m["source"]}`{named} and `{m["model"]}`, the same weights adapted to
masked diffusion with clean-causal attention and Dream's shifted prediction for {m["steps"]} steps
({m["tokens_seen"]:,} tokens of the Austen training novels; *Persuasion* is held out). {difference}
Protocol as in the two sections above (bench/edit_infill.py's functions): {data["edit_sentences"]} sentences
(12-40 tokens) drawn with seed {data["seed"]}, 10% of each one's tokens replaced at random
({n_bad} corrupted of {data["edit_tokens"]} tokens); spans of 1, 3 and 6 tokens held out of the same sentences
({counts["1"]}, {counts["3"]}, {counts["6"]}). Greedy decoding; NELBO with {data["nelbo_samples"]} draws of t. ±: the
binomial standard error over the tokens (edit) or spans (infill) — it ignores that tokens of a sentence are
correlated, so it understates the spread somewhat.

| setting | model | repaired % | clean changed % |
| --- | --- | ---: | ---: |
{chr(10).join(edit_rows)}

| model (context) | exact % (1) | bits/byte (1) | exact % (3) | bits/byte (3) | exact % (6) | bits/byte (6) |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(infill_rows)}

Infill examples (spans of 3 tokens; the truth in brackets; AR continues the left side, the adapted model reads both):

| text | SmolLM2 AR (left) | adapted (both sides) |
| --- | --- | --- |
{infill_ex}

Edit examples (K = #corrupted lowest tokens re-masked and regenerated; `[-removed-]{{+inserted+}}`):

{edit_ex}
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/smol-cc", help="the adapted (mdlm) model: a dlm run or HF folder")
    ap.add_argument("--source", default="smollm2", help="its AR source (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--sentences", type=int, default=40)
    ap.add_argument("--nelbo-samples", type=int, default=8)
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1234, help="draws the sentences, corruptions, spans and samples")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--docs", default=None, help="the docs folder written (default: the repository's docs/)")
    ap.add_argument("--section", default="smol_edit_infill", help="the section (and JSON) name written")
    args = ap.parse_args(argv)
    if min(args.sentences, args.nelbo_samples) < 1 or args.examples < 0:
        raise DlmError("--sentences and --nelbo-samples must be at least 1, --examples at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    engines = load_pair(args.model, args.source)
    for engine in engines.values():
        engine.model.eval()
    tok = engines["mdlm"].tokenizer
    sentences = study.validation_sentences(tok, args.sentences, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    corrupted = [study.corrupt(ids, tok.vocab_size, study.special_ids(tok), generator) for ids in sentences]
    spans = study.held_out_spans(sentences, seed=args.seed)
    state_file = Path(args.model) / ckpt.CHECKPOINT / "trainer_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    data = {
        "machine": machine(), "seed": args.seed, "nelbo_samples": args.nelbo_samples,
        "models": {"model": args.model, "source": args.source, "steps": state.get("step", 0),
                   "tokens_seen": state.get("tokens_seen", 0)},
        "edit_sentences": len(sentences), "edit_tokens": sum(map(len, sentences)),
        "corrupted_tokens": sum(len(p) for _, p in corrupted),
        "infill_spans": {str(m): sum(len(s[1]) == m for s in spans) for m in study.SPAN_LENGTHS},
    }  # fmt: skip
    t0 = time.time()
    data["edit"] = study.evaluate_edit(engines, sentences, corrupted, args.seed, settings=settings)
    t1 = time.time()
    infill = study.evaluate_infill(engines, spans, args.seed, args.nelbo_samples)
    data["infill"] = {row: {str(m): v for m, v in by.items()} for row, by in infill.items()}
    t2 = time.time()
    data["infill_examples"] = infill_examples(engines, spans, args.seed, args.examples)
    data["edit_examples"] = edit_examples(engines, sentences, corrupted, args.seed, args.examples)
    data["seconds"] = time.time() - start
    data["phase_seconds"] = {"edit": t1 - t0, "infill": t2 - t1}
    cmd = f"python bench/smol_capabilities.py --model {args.model}"
    if args.source != "smollm2":
        cmd += f" --source {args.source}"
    if args.section != "smol_edit_infill":
        cmd += f" --section {args.section}"
    for key in ("sentences", "nelbo_samples", "examples", "seed"):
        if getattr(args, key) != ap.get_default(key):
            cmd += f" --{key.replace('_', '-')} {getattr(args, key)}"
    md = markdown(data, cmd)
    common.write_results(args.section, data, md, document="CAPABILITIES.md", docs=args.docs)
    print(md)


if __name__ == "__main__":
    try:
        main()
    except DlmError as e:
        sys.exit(f"error: {e}")
