"""Infilling: holes anywhere in a text, filled by a sampler that reads both sides (``Engine.infill``).

    engine = dlm.Engine.load("runs/tiny")
    r = engine.infill("It is a truth [MASK*6] acknowledged, that a single man")     # an InfillResult
    print(r.text, r.fills)
    r = engine.infill("It is a truth [MASK] acknowledged", lengths=range(2, 11))    # each hole's length by NELBO

Holes: ``[MASK]`` is one token, ``[MASK*N]`` N tokens (N >= 1); any number of holes, anywhere. Every position
outside the holes is fixed: the canvas is [start token (a shifted model's)] + piece 0 + hole 0 + piece 1 + ...,
``SampleBatch.from_canvases`` marks the pieces fixed, and a sampler registered with ``infills=True`` changes only
the holes, conditioning on both sides (``dlm.samplers.infill_samplers()``; an AR model has none).

Tokenisation, the boundary choice: the pieces between holes are encoded apart, each exactly as
``tokenizer.encode(piece)``, so the fixed tokens are exactly the pieces' tokens and a hole boundary is always a
token boundary (encoding the whole text could merge a piece's last characters with the hole's). The spaces just
before a hole move into it: byte-level BPE attaches a space to the word after it (" universally" is one token),
so "a truth [MASK*6]" fixes "a truth" and the hole brings its own leading space; the piece after a hole keeps its
leading space (" acknowledged").

Variable length (``lengths``): the holes are searched one at a time, in order, not as a product: for hole h,
every candidate length is filled (the other holes at their current lengths: the ones already searched at their
best, the others at their ``[MASK*N]``), the whole filled text is scored with the objective's NELBO (an upper
bound on -log p(text), ``nelbo_samples`` Monte Carlo draws from one seed), and the length with the lowest bound
stays. The result is the best candidate of the last hole's search.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from dlm.errors import DlmError

HOLE = re.compile(r"\[MASK(?:\*(\d+))?\]")
MARKER = "[MASK"


@dataclass(frozen=True)
class Template:
    """A text with holes: ``pieces`` (the text around the holes, one more than the holes) and ``lengths`` (tokens
    per hole)."""

    pieces: tuple[str, ...]
    lengths: tuple[int, ...]


@dataclass
class InfillResult:
    text: str  # the whole text with the holes filled
    fills: list[str]  # each hole's text
    tokens: list[int]  # the whole canvas's ids (without a shifted model's start token)
    holes: list[tuple[int, int]]  # each hole's [start, end) in tokens
    nfe: int  # model calls (of every candidate with lengths; the NELBO's not counted)
    seconds: float
    nelbo: list[dict[int, float]] | None = None  # lengths: per hole, length -> NELBO (nats) of the whole text
    history: list[str] | None = None  # the rendered canvas after every step (history=True)


def parse_holes(text: str) -> Template:
    """``"a [MASK*2] b [MASK]"`` -> Template(("a ", " b ", ""), (2, 1)); a malformed marker is a one-line error."""
    pieces, lengths, pos = [], [], 0
    while (start := text.find(MARKER, pos)) >= 0:
        m = HOLE.match(text, start)
        if m is None:
            end = text.find("]", start)
            shown = text[start : end + 1] if 0 <= end < start + 16 else text[start : start + 8] + "..."
            raise DlmError(
                f"bad hole {shown!r} at character {start}: write [MASK] for one token or [MASK*N] for N tokens"
            )
        n = 1 if m.group(1) is None else int(m.group(1))
        if n < 1:
            raise DlmError(f"hole {m.group(0)} at character {start} has no tokens: N in [MASK*N] must be >= 1")
        pieces.append(text[pos:start])
        lengths.append(n)
        pos = m.end()
    if not lengths:
        raise DlmError("the text has no hole: mark one with [MASK] (one token) or [MASK*N] (N tokens)")
    pieces.append(text[pos:])
    return Template(tuple(pieces), tuple(lengths))


def parse_lengths(spec: str) -> range:
    """``"2-10"`` -> range(2, 11); ``"4"`` -> range(4, 5)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)
    lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, -1)
    if not 1 <= lo <= hi:
        raise DlmError(f"--lengths must be A-B with 1 <= A <= B (hole lengths in tokens, e.g. 2-10), got {spec!r}")
    return range(lo, hi + 1)


def encode_pieces(tokenizer, pieces: Sequence[str]) -> list[list[int]]:
    """Each piece's tokens, encoded apart; a piece's trailing spaces before a hole move into the hole."""
    last = len(pieces) - 1
    return [tokenizer.encode(p.rstrip(" ") if i < last else p) if p else [] for i, p in enumerate(pieces)]


def build_canvas(pieces: Sequence[Sequence[int]], lengths: Sequence[int], mask_id: int, start: Sequence[int] = ()):
    """(tokens, fixed, holes): start + piece 0 + mask * lengths[0] + piece 1 + ...; ``holes`` are the [start, end)
    of each hole in tokens, counted after ``start``."""
    tokens, fixed, holes = list(start), [True] * len(start), []
    for i, piece in enumerate(pieces):
        tokens += list(piece)
        fixed += [True] * len(piece)
        if i < len(lengths):
            holes.append((len(tokens) - len(start), len(tokens) - len(start) + lengths[i]))
            tokens += [mask_id] * lengths[i]
            fixed += [False] * lengths[i]
    return tokens, fixed, holes


def fill_canvases(engine, canvases, fixed, name: str, config, seeds: Sequence[int], on_step=None, history=False):
    """Run the infilling sampler ``name`` on canvases (token lists with their fixed masks), batch_size rows at a
    time, row i drawing from a generator seeded ``seeds[i]``: (filled rows, nfe, seconds, per-row histories)."""
    from dlm.engine import model_device, render
    from dlm.samplers import SAMPLERS, SampleBatch, run_sampler

    tok, entry = engine.tokenizer, SAMPLERS.get(name)
    device = model_device(engine.model)
    batch = SampleBatch.from_canvases(
        canvases, fixed, mask_id=tok.mask_id, eos_id=tok.eos_id, pad_id=tok.pad_id, stop_ids=tok.stop_ids,
        bos_id=tok.bos_id,
    ).to(device)  # fmt: skip
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    start = time.perf_counter()
    out = run_sampler(entry, engine.model, batch, config, generators, on_step, history=history)
    seconds = time.perf_counter() - start
    width = batch.tokens.shape[1]
    rows = [row[width - len(c) :] for c, row in zip(canvases, out.tokens.tolist())]  # without the padding
    steps = None
    if out.history is not None:
        steps = [[render(tok, s[width - len(c) :].tolist()) for s in h] for c, h in zip(canvases, out.history)]
    return rows, out.nfe, seconds, steps


def infill_ids(
    engine,
    pieces: Sequence[Sequence[int]],
    hole_lengths: Sequence[int],
    sampler: str | None = None,
    seed: int = 0,
    on_step=None,
    *,
    lengths: Sequence[int] | None = None,
    nelbo_samples: int = 16,
    batch_size: int = 16,
    history: bool = False,
    **options,
) -> InfillResult:
    """``Engine.infill_ids``: the holes between token pieces filled (see the module docstring)."""
    from dlm.engine import render

    if len(pieces) != len(hole_lengths) + 1 or not hole_lengths:
        raise DlmError(f"{len(hole_lengths)} holes need {len(hole_lengths) + 1} pieces around them, got {len(pieces)}")
    if any(n < 1 for n in hole_lengths) or (lengths is not None and (not lengths or min(lengths) < 1)):
        raise DlmError("every hole needs at least one token (and --lengths at least one length >= 1)")
    if batch_size <= 0 or nelbo_samples <= 0:
        raise DlmError(f"batch_size and nelbo_samples must be positive, got {batch_size} and {nelbo_samples}")
    lengths = None if lengths is None else list(lengths)
    name, config = engine.infill_sampler_config(sampler, **options)
    tok, cfg = engine.tokenizer, engine.config
    start = [tok.bos_id] if cfg.model.logits_shift else []  # a shifted model scores position i at i - 1
    widest = max(lengths or [0])  # the longest canvas: every hole at its longest
    longest = len(start) + sum(map(len, pieces)) + sum(max(n, widest) for n in hole_lengths)
    if longest > cfg.model.max_seq_len:
        raise DlmError(
            f"the text with its holes ({longest} tokens) exceeds the model's context of {cfg.model.max_seq_len} "
            "tokens; shorten the text or the holes"
        )

    def run(layouts: list[list[int]]):
        """Fill the canvas once per layout (hole lengths), every one seeded ``seed``."""
        built = [build_canvas(pieces, layout, tok.mask_id, start) for layout in layouts]
        rows, nfe, secs, steps = [], 0, 0.0, []
        for i in range(0, len(built), batch_size):
            chunk = built[i : i + batch_size]
            r, n, s, h = fill_canvases(
                engine, [b[0] for b in chunk], [b[1] for b in chunk], name, config, [seed] * len(chunk), on_step,
                history,
            )  # fmt: skip
            rows, nfe, secs, steps = rows + r, nfe + n, secs + s, steps + (h or [None] * len(chunk))
        return [(row[len(start) :], b[2]) for row, b in zip(rows, built)], nfe, secs, steps

    current, table = list(hole_lengths), None
    if lengths is None:
        (filled, nfe, seconds, steps) = run([current])
        (tokens, holes), steps = filled[0], steps[0]
    else:
        table, nfe, seconds = [], 0, 0.0
        nelbo = whole_text_nelbo(engine, seed, nelbo_samples)
        for h in range(len(current)):
            layouts = [current[:h] + [n] + current[h + 1 :] for n in lengths]
            filled, calls, secs, steps = run(layouts)
            scores = [nelbo(row) for row, _ in filled]
            best = min(range(len(lengths)), key=lambda i: (scores[i], i))  # ties: the shorter
            current[h] = lengths[best]
            table.append(dict(zip(lengths, scores)))
            (tokens, holes), steps, nfe, seconds = filled[best], steps[best], nfe + calls, seconds + secs
    fills = [render(tok, tokens[a:b]) for a, b in holes]
    return InfillResult(render(tok, tokens), fills, tokens, holes, nfe, seconds, table, steps)


def whole_text_nelbo(engine, seed: int, num_samples: int):
    """tokens -> the objective's NELBO (nats, an upper bound on -log p) of the whole text, from a generator seeded
    ``seed`` (the same random numbers for every candidate of equal length)."""
    from dlm.engine import model_device
    from dlm.objectives import OBJECTIVES

    objective = OBJECTIVES.build(engine.config, engine.tokenizer)
    device = model_device(engine.model)

    @torch.no_grad()
    def score(tokens: list[int]) -> float:
        x0 = torch.tensor([tokens], device=device)  # (1, L): the objective adds a shifted model's start token
        generator = torch.Generator(device=device).manual_seed(seed)
        return float(objective.nll(engine.model, x0, num_samples, generator)[0])

    return score


__all__ = [
    "HOLE",
    "Template",
    "InfillResult",
    "parse_holes",
    "parse_lengths",
    "encode_pieces",
    "build_canvas",
    "fill_canvases",
    "infill_ids",
    "whole_text_nelbo",
]
