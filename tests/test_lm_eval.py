"""The lm-evaluation-harness adapter (dlm.eval.harness): exact AR log-likelihoods, the diffusion estimates equal to
``dlm eval``'s NELBO for the same seed, and lm_eval end to end on tasks made from local files (no network)."""

from __future__ import annotations

import functools
import json
import math
import runpy
import subprocess
import sys

import lm_eval  # the eval extra; installed by make (a missing one fails here, it is not skipped)
import lm_eval.api.registry
import lm_eval.tasks
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

from dlm.config import ModelConfig, RunConfig, TrainConfig
from dlm.data.packing import PackedDataset
from dlm.data.tokenizer import train_tokenizer
from dlm.errors import DlmError
from dlm.eval.harness import HarnessLM, cut
from dlm.eval.likelihood import batch_seed, evaluate
from dlm.models.transformer import Transformer
from dlm.objectives import OBJECTIVES, masked_nelbo

LINES = [
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune.",
    "The family of Dashwood had long been settled in Sussex. Their estate was large.",
    "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who never took up any book.",
]
TEXT = "Emma was handsome and clever, and the family was settled in Sussex."


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(LINES * 4, vocab_size=320)


def tiny(tokenizer, objective="mdlm", max_seq_len=48, seed=0):
    """(model, tokenizer, run config) of a random 2-layer model trained with nothing."""
    torch.manual_seed(seed)
    causal = OBJECTIVES.get(objective).causal
    mc = ModelConfig(
        vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=max_seq_len
    )
    mc.causal = causal
    cfg = RunConfig(preset="tiny", model=mc, train=TrainConfig(objective=objective))
    return Transformer(mc).eval(), tokenizer, cfg


def rolling(lm, text):
    return lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]


def pair(lm, context, continuation):
    return lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])[0]


def test_import_dlm_does_not_import_lm_eval():
    code = "import sys, dlm, dlm.eval; assert 'lm_eval' not in sys.modules and 'dlm.eval.harness' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_rolling_equals_dlm_eval_for_the_same_seed(tokenizer, objective):
    """loglikelihood_rolling(text) = -(dlm eval's NELBO) of the text: one sequence that fits the context, and a
    longer text whose full chunks are dlm eval's packed sequences (batch k seeded (seed, k)) plus a tail."""
    model, tok, cfg = tiny(tokenizer, objective, max_seq_len=16)
    lm = HarnessLM.from_loaded(model, tok, cfg, num_samples=3, seed=7)
    objective_ = OBJECTIVES.build(cfg, tok)

    ids = tok.encode(TEXT)[:16]
    short = tok.decode(ids)
    assert tok.encode(short) == ids
    report = evaluate(model, objective_, PackedDataset(np.array(ids), len(ids)), tok, num_samples=3, seed=7)
    direct = objective_.nll(model, torch.tensor([ids]), 3, torch.Generator().manual_seed(batch_seed(7, 0)))
    assert rolling(lm, short) == -direct.double().item()
    assert rolling(lm, short) == pytest.approx(-report["nats_per_token"] * report["tokens"], rel=1e-12)

    long_ids = tok.encode(" ".join(LINES))
    full = len(long_ids) // 16 * 16
    assert len(long_ids) > full >= 32  # several full chunks and a tail
    report = evaluate(
        model, objective_, PackedDataset(np.array(long_ids), 16), tok, num_samples=3, seed=7, batch_size=1
    )
    tail = objective_.nll(
        model, torch.tensor([long_ids[full:]]), 3, torch.Generator().manual_seed(batch_seed(7, full // 16))
    )
    expected = -(report["nats_per_token"] * report["tokens"] + tail.double().item())
    assert rolling(lm, " ".join(LINES)) == pytest.approx(expected, rel=1e-12)


def test_ar_loglikelihood_is_exact(tokenizer):
    model, tok, cfg = tiny(tokenizer, "ar", max_seq_len=24)
    lm = HarnessLM.from_loaded(model, tok, cfg)
    context, continuation = "Emma was handsome and", " clever"
    ctx, cont = tok.encode(context), tok.encode(context + continuation)[len(tok.encode(context)) :]
    assert lm.encode_pair(context, continuation) == (ctx, cont)

    def direct(ids, n):  # sum of log p of the last n tokens, after <|endoftext|>, from one model call
        with torch.no_grad():
            log_p = F.log_softmax(model(torch.tensor([[tok.eos_id] + ids[:-1]])).float(), -1)[0]
        picked = log_p[torch.arange(len(ids)), torch.tensor(ids)][-n:]
        return picked.sum().item(), bool((log_p[-n:].argmax(-1) == torch.tensor(ids[-n:])).all())

    logprob, greedy = pair(lm, context, continuation)
    want, want_greedy = direct(ctx + cont, len(cont))
    assert logprob == pytest.approx(want, abs=1e-5) and greedy == want_greedy
    assert pair(lm, "Emma was handsome and ", "clever")[0] == pytest.approx(logprob, abs=1e-5)  # spaces move over

    long_context = " ".join(LINES)  # longer than the context: cut from the left, the continuation kept whole
    ids = (tok.encode(long_context) + tok.encode(long_context + continuation)[len(tok.encode(long_context)) :])[-24:]
    assert pair(lm, long_context, continuation)[0] == pytest.approx(direct(ids, len(cont))[0], abs=1e-5)


class Constant(torch.nn.Module):
    """A model whose every position predicts ``token`` (log-prob about 0), whatever the input."""

    def __init__(self, vocab, token):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.full((vocab,), -20.0).index_fill(0, torch.tensor([token]), 20.0))

    def forward(self, x, t=None, **_):
        return self.logits.expand(*x.shape, -1)


@pytest.mark.parametrize("objective", ["mdlm", "ar"])
def test_is_greedy_says_whether_the_argmax_gives_the_continuation(tokenizer, objective):
    _, tok, cfg = tiny(tokenizer, objective)
    token = tok.encode(" the")[0]
    lm = HarnessLM.from_loaded(Constant(cfg.model.vocab_size, token), tok, cfg, num_samples=2)
    logprob, greedy = pair(lm, "Emma was", tok.decode([token, token]))
    assert greedy and -1e-3 < logprob <= 0.0
    assert not pair(lm, "Emma was", " handsome")[1]


def test_mdlm_with_no_context_is_the_unconditional_nelbo(tokenizer):
    """The conditional estimate shares masked_nelbo's draws: with an empty context it is the NELBO of dlm eval
    (bit for bit with one draw per model call, within rounding when draws are batched)."""
    model, tok, cfg = tiny(tokenizer)
    ids = tok.encode(TEXT)
    nelbo = masked_nelbo(
        model, torch.tensor([ids]), mask_id=tok.mask_id, num_samples=8, generator=torch.Generator().manual_seed(0)
    )
    one = HarnessLM.from_loaded(model, tok, cfg, num_samples=8, batch_size=1)
    assert pair(one, "", TEXT)[0] == -nelbo.item()
    assert pair(one, "", TEXT)[0] == pytest.approx(rolling(one, TEXT), abs=1e-9)
    batched = HarnessLM.from_loaded(model, tok, cfg, num_samples=8, batch_size=3)
    assert pair(batched, "", TEXT)[0] == pytest.approx(-nelbo.item(), rel=1e-5)


def test_mdlm_conditional_estimate_masks_only_the_continuation(tokenizer):
    model, tok, cfg = tiny(tokenizer)
    seen = []

    def spy(x, t=None, **kw):
        seen.append(x.clone())
        return model(x, t, **kw)

    lm = HarnessLM.from_loaded(spy, tok, cfg, num_samples=16, seed=3, batch_size=4)
    context, continuation = "Emma was handsome and clever,", " and rich"
    ctx, cont = lm.encode_pair(context, continuation)
    first = pair(lm, context, continuation)
    canvases = torch.cat(seen)  # (16 draws + 1 greedy call, L)
    assert canvases.shape == (17, len(ctx) + len(cont))
    assert not (canvases[:, : len(ctx)] == tok.mask_id).any()  # the context is never masked
    assert (canvases[:, len(ctx) :] == tok.mask_id).any()
    assert pair(lm, context, continuation) == first  # same seed, same number
    assert math.isfinite(first[0]) and first[0] < 0.0  # minus a NELBO: a lower bound on log p
    other = HarnessLM.from_loaded(model, tok, cfg, num_samples=16, seed=4, batch_size=4)
    assert pair(other, context, continuation)[0] != first[0]


def test_generate_until_runs_the_engine_and_cuts_at_until(tokenizer):
    model, tok, cfg = tiny(tokenizer)
    lm = HarnessLM.from_loaded(model, tok, cfg, sampler="confidence", steps=8, seed=5, temperature=1.0)
    requests = [
        Instance("generate_until", {}, ("Emma was", {"until": ["\n"], "max_gen_toks": 8}), 0),
        Instance("generate_until", {}, ("It is a truth", {"until": "e", "max_gen_toks": 8}), 1),
    ]
    texts = lm.generate_until(requests)
    raw = lm.engine.generate(["Emma was", "It is a truth"], "confidence", 5, gen_length=8, steps=8, temperature=1.0)
    assert texts == [raw[0].text.split("\n")[0], raw[1].text.split("e")[0]]
    assert cut("abc. def\n", ["\n", "."]) == "abc" and cut("abc", []) == "abc"

    fixed = HarnessLM.from_loaded(model, tok, cfg, gen_length=8, steps=8, seed=5, temperature=1.0)
    [short] = fixed.generate_until([Instance("generate_until", {}, ("Emma was", {"max_gen_toks": 3}), 0)])
    assert short == tok.decode(raw[0].tokens[:3])  # gen_length tokens made, max_gen_toks kept


@pytest.mark.parametrize(
    "options, call, message",
    [
        (dict(sampler="ancestral", threshold=0.9), None, "threshold"),
        (dict(num_samples=0), None, "num_samples must be a positive integer"),
        (dict(batch_size="auto"), None, "batch_size must be a positive integer"),
        (dict(gen_length=0), None, "gen_length must be a positive integer"),
        ({}, ("", " ".join(LINES * 3)), "does not fit the model's context of 48 tokens"),
        (dict(gen_length=48), "generate", "leaves no room for a prompt"),
    ],
)
def test_bad_input_is_a_one_line_error(tokenizer, options, call, message):
    model, tok, cfg = tiny(tokenizer)
    with pytest.raises(DlmError, match=message) as info:
        lm = HarnessLM.from_loaded(model, tok, cfg, **options)
        if call == "generate":
            lm.generate_until([Instance("generate_until", {}, ("Emma", {}), 0)])
        elif call is not None:
            pair(lm, *call)
    assert "\n" not in str(info.value)


def test_loglikelihood_names_the_objectives_it_supports(tokenizer):
    _, tok, cfg = tiny(tokenizer, "udlm")
    cfg.model.time_conditioning = True
    lm = HarnessLM.from_loaded(Transformer(cfg.model), tok, cfg, num_samples=1)
    with pytest.raises(DlmError, match="implemented for the ar, mdlm objectives, not udlm"):
        pair(lm, "Emma", " was")
    assert math.isfinite(rolling(lm, TEXT))  # perplexity works for every objective


def write_tasks(tmp_path):
    """Three lm_eval tasks over local JSONL files (multiple choice, perplexity, generation), written as JSON, which
    is YAML."""
    docs = [
        {"question": "Emma was", "choices": ["handsome", "rich", "clever"], "answer": 0},
        {"question": "The family of", "choices": ["Dashwood", "Elliot"], "answer": 1},
        {"question": "It is a truth universally", "choices": ["acknowledged", "denied"], "answer": 0},
    ]
    (tmp_path / "choice.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    (tmp_path / "text.jsonl").write_text("\n".join(json.dumps({"text": line}) for line in LINES[:2]))

    def metric(name, aggregation, higher):
        return {"metric": name, "aggregation": aggregation, "higher_is_better": higher}

    tasks = {
        "dlm_tiny_choice": dict(
            output_type="multiple_choice",
            doc_to_text="{{question}}",
            doc_to_choice="{{choices}}",
            doc_to_target="{{answer}}",
            metric_list=[metric("acc", "mean", True)],
        ),
        "dlm_tiny_ppl": dict(
            output_type="loglikelihood_rolling",
            doc_to_text="",
            doc_to_target="{{text}}",
            metric_list=[
                metric("word_perplexity", "weighted_perplexity", False),
                metric("bits_per_byte", "bits_per_byte", False),
            ],
        ),
        "dlm_tiny_gen": dict(
            output_type="generate_until",
            doc_to_text="{{question}}",
            doc_to_target="{{choices[0]}}",
            generation_kwargs={"until": ["\n"], "max_gen_toks": 8},
            metric_list=[metric("exact_match", "mean", True)],
        ),
    }
    for name, spec in tasks.items():
        data = tmp_path / ("text.jsonl" if name == "dlm_tiny_ppl" else "choice.jsonl")
        spec = dict(
            task=name,
            dataset_path="json",
            dataset_kwargs={"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "hf")},
            test_split="test",
            **spec,
        )
        (tmp_path / f"{name}.yaml").write_text(json.dumps(spec, indent=1))
    return docs


def test_simple_evaluate_end_to_end_offline(tokenizer, tmp_path, monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    docs = write_tasks(tmp_path)
    model, tok, cfg = tiny(tokenizer)
    lm = HarnessLM.from_loaded(model, tok, cfg, num_samples=4, steps=8, seed=1)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=["dlm_tiny_choice", "dlm_tiny_ppl", "dlm_tiny_gen"], task_manager=manager, log_samples=True
    )
    results = out["results"]

    correct = []
    for d, sample in zip(docs, sorted(out["samples"]["dlm_tiny_choice"], key=lambda s: s["doc_id"])):
        pairs = [(d["question"], " " + choice) for choice in d["choices"]]  # lm_eval's target delimiter: a space
        assert [tuple(a) for a in sample["arguments"]] == pairs
        scores = [pair(lm, *p) for p in pairs]
        assert [tuple(r) for r in sample["filtered_resps"]] == scores  # the adapter's own numbers, recomputed
        correct.append(max(range(len(pairs)), key=lambda i: scores[i][0]) == d["answer"])
    assert results["dlm_tiny_choice"]["acc,none"] == pytest.approx(sum(correct) / len(docs))

    nats = -sum(rolling(lm, line) for line in LINES[:2])
    text_bytes = sum(len(line.encode()) for line in LINES[:2])
    assert results["dlm_tiny_ppl"]["bits_per_byte,none"] == pytest.approx(nats / text_bytes / math.log(2))
    assert results["dlm_tiny_ppl"]["word_perplexity,none"] > 1.0

    assert "exact_match,none" in results["dlm_tiny_gen"]
    generated = [s["resps"][0][0] for s in sorted(out["samples"]["dlm_tiny_gen"], key=lambda s: s["doc_id"])]
    requests = [Instance("generate_until", {}, (d["question"], {"until": ["\n"], "max_gen_toks": 8}), 0) for d in docs]
    assert generated == lm.generate_until(requests)


@pytest.mark.filterwarnings("ignore:.dlm.eval.harness. found in sys.modules")
def test_the_command_line_registers_dlm(tokenizer, tmp_path, monkeypatch, capsys):
    """``python -m dlm.eval.harness ARGS`` is lm_eval's CLI with ``--model dlm``: a saved run, a local task, offline.
    (Run in this process, with lm_eval's index of its own ~10k task files left out: it takes 15 s to build.)"""
    from dlm.train.checkpoint import save_checkpoint

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(TaskManager, include_defaults=False))
    assert lm_eval.api.registry.get_model("dlm") is HarnessLM
    model, tok, cfg = tiny(tokenizer)
    save_checkpoint(tmp_path / "run", model=model, tokenizer=tok, config=cfg)
    write_tasks(tmp_path)
    args = ["--model", "dlm", "--model_args", f"pretrained={tmp_path / 'run'},num_samples=2,seed=1"]
    args += ["--tasks", "dlm_tiny_choice", "--include_path", str(tmp_path), "--device", "cpu", "--batch_size", "2"]
    monkeypatch.setattr(sys, "argv", ["harness.py", *args])
    runpy.run_module("dlm.eval.harness", run_name="__main__")
    printed = capsys.readouterr().out
    assert "dlm_tiny_choice" in printed and "acc" in printed
