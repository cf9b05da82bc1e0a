"""What a client sees of one row while it denoises: the committed text as it grows, and the whole canvas.

Text: the committed prefix of the generated region (every position before the first open one), up to the row's
first stop token, rendered like ``Engine.generate``'s ``Result.text`` and cut at the first stop string. A delta is
sent only when the new text extends what was sent; what could still become a stop string, and a trailing
incomplete UTF-8 character, wait for the next step. So the joined deltas are exactly the final text.

Canvas (``dlm.stream_denoising``): every generated position as committed (its token), provisional (a candidate,
with its confidence where the sampler scores it) or masked, with the step, the model calls (NFE) and the number of
positions still masked.
"""

from __future__ import annotations

import math

from dlm.engine import render


class RowText:
    """The committed text of one row: ``update(ids)`` with the row's committed prefix -> the text to send now."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, stop
        self.sent = ""
        self.stopped = False  # a stop string was reached: nothing more is sent

    def update(self, ids: list[int], final: bool = False) -> str:
        if self.stopped:
            return ""
        text = render(self.tokenizer, ids)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            text, self.stopped = text[: min(cuts)], True
        elif not final:
            text = text[: len(text) - self._undecided(text)]
        if not text.startswith(self.sent):
            return ""  # a decoding that changed with the next token: wait for the final text
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def _undecided(self, text: str) -> int:
        """How many trailing characters may still change: the longest suffix that starts a stop string, or a
        trailing replacement character (half of a UTF-8 character)."""
        hold = len(text) - len(text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return hold


def committed_prefix(tokens: list[int], committed: list[bool], stop_ids) -> tuple[list[int], int | None]:
    """(the committed prefix up to the first stop token, that stop token if it is committed, else None)."""
    out = []
    for token, done in zip(tokens, committed):
        if not done:
            return out, None
        if token in stop_ids:
            return out, token
        out.append(token)
    return out, None


class CanvasView:
    """The denoising event of one row of a ``SampleState``: ``event(state, j, start)`` for the columns from
    ``start`` (the generated region)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token: int) -> str:
        if token not in self._texts:
            self._texts[token] = self.tokenizer.decode([token], skip_special_tokens=False)
        return self._texts[token]

    def event(self, state, j: int, start: int) -> dict:
        tokens = state.tokens[j, start:].tolist()
        committed = state.committed[j, start:].tolist()
        masked = None if state.masked is None else state.masked[j, start:].tolist()
        candidate = None if state.provisional is None else state.provisional[j, start:].tolist()
        score = None if state.confidence is None else state.confidence[j, start:].tolist()
        canvas = []
        for i, token in enumerate(tokens):
            if committed[i]:
                canvas.append({"state": "committed", "id": token, "text": self.text(token)})
                continue
            shown = token if candidate is None else candidate[i]
            if masked is not None and masked[i] and (candidate is None or shown == self.tokenizer.mask_id):
                canvas.append({"state": "masked"})
                continue
            cell = {"state": "provisional", "id": shown, "text": self.text(shown)}
            if score is not None and math.isfinite(score[i]):
                cell["confidence"] = round(score[i], 4)
            canvas.append(cell)
        still = sum(masked) if masked is not None else sum(not c for c in committed)
        return {"step": state.step, "nfe": state.nfe, "masked": still, "canvas": canvas}

    def final(self, tokens: list[int], stop_id: int | None, step: int, nfe: int) -> dict:
        """The last event: the row's answer tokens and the stop token that ended it (if one did), none of them open
        any more unless the generation was cut short."""
        ids = list(tokens) + ([] if stop_id is None else [stop_id])
        mask = self.tokenizer.mask_id
        canvas = [
            {"state": "masked"} if t == mask else {"state": "committed", "id": t, "text": self.text(t)} for t in ids
        ]
        masked = sum(1 for t in ids if t == mask)
        return {"step": step, "nfe": nfe, "masked": masked, "canvas": canvas, "final": True}
