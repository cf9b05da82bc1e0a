"""Chat (``dlm.chat``, ``Engine.chat``, ``dlm chat``): the conversation through the chat template, the answer
streamed step by step, stopped at end of turn or a stop string, the oldest turns dropped when the history outgrows
the context, and the verb end to end, one-shot and interactive."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dlm.chat import fit_history
from dlm.cli import app
from dlm.data.chat import render_chat
from dlm.engine import Engine, render
from dlm.errors import DlmError
from tests.sft_helpers import facts_world, fine_tune

QUESTION = "Who is the mentor of Wenros Wenquinis?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    base, data, _ = facts_world(root, n=64)
    fine_tune(base, data, root / "tuned", steps=10)
    return root / "tuned"


def test_the_answer_streams_and_ends_at_its_end_of_turn(run):
    engine = Engine.load(run)
    states = []
    reply = engine.chat(
        [{"role": "user", "content": QUESTION}], gen_length=8, on_step=lambda s: states.append(s.tokens.clone())
    )
    prompt = engine.tokenizer.encode(render_chat(engine.tokenizer, [{"role": "user", "content": QUESTION}]))
    assert reply.prompt_tokens == len(prompt) and reply.dropped == 0 and reply.nfe == len(states) > 0
    first = render(engine.tokenizer, states[0][0, -8:].tolist())
    assert "░" in first  # the canvas shows the positions still masked
    final = states[-1][0, -8:].tolist()
    assert reply.tokens == final[: len(reply.tokens)]
    assert reply.ended in ("end of turn", "length")


def test_a_stop_string_cuts_the_answer(run):
    engine = Engine.load(run)
    question = [{"role": "user", "content": QUESTION}]
    full = engine.chat(question, gen_length=8, stop_at_eos=False)
    words = full.text.split()
    assert len(words) >= 2
    cut = engine.chat(question, gen_length=8, stop_at_eos=False, stop=[words[1]])
    assert cut.ended == "stop string" and cut.text == full.text[: full.text.find(words[1])]


def test_the_oldest_turns_are_dropped_to_fit_the_context(run):
    tok = Engine.load(run).tokenizer
    turn = [{"role": "user", "content": "hello there hello"}, {"role": "assistant", "content": "there"}]
    chat = [{"role": "system", "content": "Be brief."}, *turn * 3, {"role": "user", "content": "hello"}]
    ids, dropped, kept = fit_history(tok, chat, room=8)  # 6 tokens: "System: Be brief. User: hello Assistant:"
    assert len(ids) == 6 and dropped == 3 and kept == [chat[0], chat[-1]]  # the system message stays
    ids, dropped, kept = fit_history(tok, chat, room=12)
    assert len(ids) == 12 and dropped == 2 and kept == [chat[0], *turn, chat[-1]]
    assert fit_history(tok, chat, room=24)[1] == 0
    with pytest.raises(DlmError, match="does not fit"):
        fit_history(tok, [{"role": "user", "content": "hello " * 40}], room=16)


def test_dlm_chat_message_end_to_end(run):
    result = CliRunner().invoke(app, ["chat", str(run), "--message", QUESTION, "--gen-length", "8", "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert "NFE 4," in result.stderr and " s, " in result.stderr
    assert "NFE" not in result.stdout  # stdout holds the answer alone (scriptable)
    bad = CliRunner().invoke(app, ["chat", str(run), "--message", "hi", "--cache", "x"])
    assert bad.exit_code != 0


def test_dlm_chat_interactive_keeps_history_and_drops_old_turns(run):
    lines = ["hello there hello there hello there"] * 4 + ["/reset", QUESTION, "/exit"]
    result = CliRunner().invoke(app, ["chat", str(run), "--gen-length", "8"], input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("NFE") == 5
    assert "oldest turn(s) were dropped" in result.output and "history cleared" in result.output
