"""``python -m dlm.data.sft_tasks --task distill`` (``dlm.data.distill``) with a tiny random Llama folder as the
teacher: its records hold exactly the Engine's greedy answers to the generated prompts, reproducible from the seed,
the same batched as one by one; the filter; and ``dlm sft`` trains on the file."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dlm.cli import app
from dlm.data.chat import render_chat
from dlm.data.distill import distill_prompts, distill_records, keep_answer
from dlm.data.sft_tasks import main
from dlm.engine import Engine
from dlm.loader import load
from tests.test_loading import random_hf, write_tokenizer

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny random Llama chat folder (ChatML template, <|im_end|> ends a turn) with room for long prompts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("teacher")
    random_hf("llama", max_position_embeddings=512).save_pretrained(folder)
    write_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHATML}))
    yield folder
    torch.set_num_threads(threads)


def distill_file(teacher, out, *extra):
    args = ["--task", "distill", "--teacher", str(teacher), "--n", "4", "--max-new-tokens", "6", "--keep-all"]
    main([*args, *extra, "--out", str(out)])
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_records_are_the_engines_greedy_answers_reproducibly(teacher, tmp_path):
    records = distill_file(teacher, tmp_path / "a.jsonl", "--batch-size", "3")  # batches of 3 and 1
    assert len(records) == 4 and {r["prompt"] for r in records} == set(distill_prompts(4, 0))
    engine = Engine.load(teacher)
    tok = engine.tokenizer
    for r in records:  # one by one, as the Engine answers a lone prompt
        ids = tok.encode(render_chat(tok, [{"role": "user", "content": r["prompt"]}]))
        [result] = engine.generate_ids([ids], "ar", 0, gen_length=6, temperature=0.0)
        assert r["response"] == result.text.strip() and r["response"]
    assert distill_file(teacher, tmp_path / "b.jsonl", "--batch-size", "4") == records  # the same file again
    assert {r["prompt"] for r in distill_file(teacher, tmp_path / "c.jsonl", "--seed", "1")} != {
        r["prompt"] for r in records
    }


def test_sampled_answers_do_not_depend_on_the_batch(teacher):
    engine = Engine.load(teacher)
    kw = dict(engine=engine, max_new_tokens=6, temperature=1.0, keep_all=True, progress=False)
    batched = distill_records(5, 3, batch_size=5, **kw)
    assert batched == distill_records(5, 3, batch_size=2, **kw)
    assert batched != distill_records(5, 4, batch_size=5, **kw)


def test_prompts_are_distinct_and_the_filter_drops_empty_cut_and_looping_answers():
    prompts = distill_prompts(300, 0)
    assert len(set(prompts)) == 300 and prompts == distill_prompts(300, 0)
    assert any(p.startswith("Continue the story: ") for p in prompts) and any("character" in p for p in prompts)
    assert keep_answer("Glad.", cut=False) and not keep_answer(" \n", cut=False)
    assert not keep_answer("A lighthouse is a tower that", cut=True)
    assert not keep_answer("the sea is blue and " * 5, cut=False)
    assert keep_answer("A compass is a small tool that shows which way is north, so travellers find their way.", False)


def test_dlm_sft_trains_on_a_distilled_file(teacher, tmp_path):
    data = tmp_path / "distilled.jsonl"
    distill_file(teacher, data)
    result = CliRunner().invoke(
        app,
        ["sft", str(teacher), "--data", str(data), "--out", str(tmp_path / "student"), "--objective", "ar"]
        + ["--max-steps", "2", "--batch-size", "2", "--precision", "fp32", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    before, after = load(teacher)[0].state_dict(), load(tmp_path / "student")[0].state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
