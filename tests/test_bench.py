"""Quality metrics of samples and `dlm bench sample` end to end (tiny models; a dlm AR run as the reference)."""

import json
import math

import pytest
import torch
from helpers import dlm

from dlm.errors import DlmError
from dlm.eval.generative import distinct_n, generative_perplexity, load_reference, unigram_entropy


def test_unigram_entropy_and_distinct_2_exact():
    assert unigram_entropy([[1, 1, 2, 2]]) == pytest.approx(math.log(2))
    assert unigram_entropy([[5, 5, 5], [1, 2, 3, 4]]) == pytest.approx(math.log(4) / 2)
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert distinct_n([[1, 2], [1, 2], [2, 3]], 2) == pytest.approx(2 / 3)  # counted over all samples
    assert distinct_n([[7]], 2) == 0.0


def test_dlm_reference_scores_the_continuation_only(tiny_ar_run):
    import dlm as dlm_api
    from dlm.objectives.ar import ar_token_nll

    ref = load_reference(tiny_ar_run)
    model, tok, _ = dlm_api.load(tiny_ar_run)
    context, text = "Anne Elliot", " was walking"
    nats, counts = ref.nll([text], [context])
    ids = tok.encode(context) + tok.encode(text)
    with torch.no_grad():
        expected = ar_token_nll(model, torch.tensor([ids]), eos_id=tok.eos_id)[0, len(tok.encode(context)) :].sum()
    assert counts == [len(tok.encode(text))]
    assert nats[0] == pytest.approx(float(expected), rel=1e-5)
    alone, _ = ref.nll([text])
    assert alone[0] != pytest.approx(nats[0])  # the context matters
    assert generative_perplexity(ref, [text], [context]) == pytest.approx(math.exp(nats[0] / counts[0]))


def test_reference_errors(tiny_mdlm_run, tmp_path):
    with pytest.raises(DlmError, match="must be autoregressive"):
        load_reference(tiny_mdlm_run)
    with pytest.raises(DlmError, match="no reference model at"):
        load_reference(tmp_path / "nothing")


def test_bench_sample_end_to_end(tiny_mdlm_run, tiny_ar_run, tmp_path):
    out = tmp_path / "bench"
    proc = dlm(
        "bench",
        "sample",
        tiny_mdlm_run,
        "--ar",
        tiny_ar_run,
        "--reference",
        tiny_ar_run,
        "--judge",
        tiny_ar_run,
        "--gen-length",
        16,
        "--num-samples",
        4,
        "--batch-size",
        2,
        "--batch1-samples",
        2,
        "--block-length",
        8,
        "--quick",
        "--out",
        out,
    )
    assert "| setting | NFE/token (b=1 / b=2) |" in proc.stdout
    report = json.loads((out / "sample_bench.json").read_text())
    by_name = {r["name"]: r for r in report["results"]}
    ar = by_name["T=1, KV cache"]
    assert ar["model"] == "ar" and ar["batch"]["nfe_per_token"] == 1.0  # prefill + 15 one-token calls
    assert by_name["confidence T=1, 16 steps, block 8"]["batch"]["nfe_per_token"] == 1.0
    assert all(r["batch1_equals_batch"] for r in report["results"])  # batching never changes a sample
    assert all(r["gen_ppl"] > 1 and 0 < r["entropy"] and 0 <= r["distinct2"] <= 1 for r in report["results"])
    # the second judge is the reference again: the same perplexities, in a column of their own
    assert all(list(r["gen_ppl_judges"].values()) == [r["gen_ppl"]] for r in report["results"])
    assert "gen-PPL (" in proc.stdout
    assert len(report["summary"]["settings"]) == 4
    assert (out / "sample_bench.png").stat().st_size > 10_000
    assert (out / "sample_bench.md").read_text().startswith("| setting |")


def test_bench_sample_rejects_an_ar_run_first(tiny_ar_run):
    proc = dlm("bench", "sample", tiny_ar_run, "--reference", tiny_ar_run, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "is an AR model" in proc.stderr


def test_discrete_family_unigram_reference_is_a_normalised_context_free_model(tiny_ar_run):
    """The benchmark's context-free row: exact NLL over the tokens `dlm eval` scores, at least the entropy of the
    validation tokens' own frequencies (Gibbs), and seeded i.i.d. samples."""
    import sys
    from argparse import Namespace
    from pathlib import Path

    import numpy as np

    import dlm as dlm_api
    from dlm.data.packing import load_packed

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import discrete_family

    class Lengths:  # a reference that scores each text one nat per character, and keeps what reached it
        seen = []

        def nll(self, texts, contexts=None):
            self.seen.append(texts)
            return [float(len(x)) for x in texts], [len(x) for x in texts]

    _, tok, cfg = dlm_api.load(tiny_ar_run)
    row = discrete_family.unigram_reference(tiny_ar_run, Namespace(gen_length=40, samples=3), Lengths())
    report = json.loads(dlm("eval", tiny_ar_run, "--json").stdout)
    assert row["eval"]["tokens"] == report["tokens"] and row["eval"]["bytes"] == report["bytes"]
    _, _, val = load_packed(cfg.data, tok)
    freq = np.bincount(np.asarray(val.tokens[: report["tokens"]]), minlength=cfg.model.vocab_size) / report["tokens"]
    own_entropy = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
    assert own_entropy < row["eval"]["nats_per_token"] < math.log(cfg.model.vocab_size - 2)
    assert row["eval"]["ppl"] == pytest.approx(math.exp(row["eval"]["nats_per_token"]))
    assert len(Lengths.seen) == 1 and len(Lengths.seen[0]) == 3 and all(Lengths.seen[0])  # 3 non-empty texts
    assert row["sample"]["gen_ppl"] == pytest.approx(math.e) and 0.0 < row["sample"]["entropy"] <= math.log(40)
    again = discrete_family.unigram_reference(tiny_ar_run, Namespace(gen_length=40, samples=3), Lengths())
    assert again == row  # seeded draws
