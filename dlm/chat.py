"""Chat: a conversation in, the assistant's next answer out, for ``dlm chat`` and ``Engine.chat``.

    engine = dlm.Engine.load("runs/tiny-sft")
    reply = engine.chat([{"role": "user", "content": "2 + 3 ="}], gen_length=16, stop=["\\n"])
    print(reply.text, reply.nfe, reply.seconds, reply.dropped)

The conversation is rendered by the tokenizer's chat template (``dlm.data.chat``; a documented default for
tokenizers without one), and the answer is sampled after it by the model's sampler, ``gen_length`` tokens at most.
The answer ends at the first stop token (EOS, or an end-of-turn id such as ``<|im_end|>``) or at the first of the
``stop`` strings: once the committed text from the start of the answer holds one, sampling stops there. When the
conversation and ``gen_length`` do not fit the model's context, the oldest turns (a user message with the answers
after it; a system message stays) are dropped, and ``ChatResult.dropped`` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dlm.data.chat import render_chat
from dlm.errors import DlmError


@dataclass
class ChatResult:
    text: str  # the answer, up to its end of turn or stop string
    tokens: list[int]  # the answer's token ids (up to its first stop token)
    nfe: int  # model calls
    seconds: float  # wall time of the generation
    dropped: int  # oldest turns dropped from the conversation to fit the context
    ended: str  # why the answer ended: "end of turn", "stop string" or "length"
    prompt_tokens: int  # tokens of the rendered conversation the answer follows
    messages: list[dict]  # the conversation the answer follows (without the dropped turns)


def fit_history(tok, messages: list[dict], room: int) -> tuple[list[int], int, list[dict]]:
    """(prompt ids, turns dropped, the messages kept): the oldest turns dropped until the rendered conversation
    takes at most ``room`` tokens; a one-line error when the last message alone does not fit."""
    kept, dropped = list(messages), 0
    while True:
        ids = tok.encode(render_chat(tok, kept))
        if len(ids) <= room:
            return ids, dropped, kept
        first = next(i for i, m in enumerate(kept) if m["role"] != "system")  # the oldest turn's start
        if first == len(kept) - 1:  # only the new user message is left
            raise DlmError(
                f"the last message ({len(ids)} tokens with the template) does not fit the {room} tokens the "
                "context leaves beside the answer; shorten it or lower --gen-length"
            )
        # drop one turn: the oldest message and the answers after it, up to the next user message
        end = next(i for i in range(first + 1, len(kept)) if kept[i]["role"] == "user")
        kept = kept[:first] + kept[end:]
        dropped += 1


def chat(
    engine,
    messages: list[dict],
    sampler: str | None = None,
    seed: int = 0,
    on_step=None,
    *,
    gen_length: int = 64,
    stop: Sequence[str] = (),
    **options,
) -> ChatResult:
    """The assistant's answer to ``messages`` (see the module docstring); ``on_step`` sees every denoising step."""
    if not messages or messages[-1].get("role") != "user":
        raise DlmError("the conversation must end with a user message")
    tok, cfg = engine.tokenizer, engine.config
    bos = 1 if cfg.model.logits_shift else 0
    room = cfg.model.max_seq_len - gen_length - bos
    if room <= 0:
        raise DlmError(
            f"--gen-length {gen_length} leaves no room for the conversation in the context of "
            f"{cfg.model.max_seq_len} tokens; lower it"
        )
    prompt, dropped, kept = fit_history(tok, messages, room)
    stops = [s for s in stop if s]
    listen = on_step
    if stops:  # stop once the committed text from the start of the answer holds a stop string

        def listen(state):
            row, done = state.tokens[0, -gen_length:].tolist(), state.committed[0, -gen_length:].tolist()
            prefix = row[: done.index(False)] if False in done else row
            keep_going = on_step is None or on_step(state) is not False
            return keep_going and not any(s in tok.decode(prefix) for s in stops)

    [result] = engine.generate_ids([prompt], sampler, seed, listen, gen_length=gen_length, **options)
    text, ended = result.text, "end of turn" if len(result.tokens) < gen_length else "length"
    cuts = [text.find(s) for s in stops if s in text]
    if cuts:
        text, ended = text[: min(cuts)], "stop string"
    return ChatResult(text, result.tokens, result.nfe, result.seconds, dropped, ended, len(prompt), kept)
