"""``POST /v1/dlm/infill`` and ``POST /v1/dlm/edit`` bodies -> validated ``Task``s for the batching queue.

    {"model": "tiny", "text": "It is a truth [MASK*6] acknowledged", "seed": 1, "lengths": [2, 3, 4],
     "dlm": {"sampler": "confidence", "steps": 6}}                                         (infill: Engine.infill)
    {"model": "tiny", "text": "It is a truth universally acknowledged", "spans": [[8, 13]], "rounds": 1,
     "dlm": {"steps": 4}}                                                                  (edit: Engine.edit)

A ``Task`` runs alone (one Engine call, its own generator seeded ``seed``), in its turn in the same queue as the
completions; ``run(on_step)`` returns the response's fields. The mistakes the Engine would find later (a
malformed hole, a sampler that cannot infill, a text over the context) are caught here, a 400 before queueing; a
sampler's block layout over the whole text is checked when it runs, and its ``DlmError`` is a 400 then (it runs
alone, so it harms no other request).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable

from dlm.errors import DlmError
from dlm.samplers import user_fields
from dlm.serve.requests import MAX_SEED, ApiError, Limits, checked_config, integer, sampler_options

FIELDS = {
    "infill": ("model", "text", "seed", "lengths", "nelbo_samples", "user", "dlm"),
    "edit": ("model", "text", "seed", "spans", "rounds", "below", "remask_k", "user", "dlm"),
}


@dataclass
class Task:
    """A validated infill or edit request: ``run(on_step)`` -> the response fields (text, nfe, seconds, ...)."""

    kind: str  # infill or edit
    sampler: str
    config: object  # the sampler's frozen config
    seed: int
    run: Callable
    rows: int = 1
    n: int = 1
    max_tokens: int = 0  # the tokens it generates (the holes, or what edit may re-mask: the text)
    stream: bool = False
    denoising: bool = False
    stop: tuple = ()

    def settings(self) -> dict:
        options = {f: getattr(self.config, f) for f in user_fields(type(self.config))}
        return {"seed": self.seed, "sampler": self.sampler, **options}


def parse_task(kind: str, body, engine, model_id: str, limits: Limits) -> Task:
    """An infill or edit body -> a ``Task``, or an ``ApiError``."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    for key in body:
        if key not in FIELDS[kind]:
            raise ApiError(f"unknown field {key!r}; this endpoint takes: {', '.join(FIELDS[kind])}", param=key)
    model = body.get("model")
    if model != model_id:
        raise ApiError(
            f"model must be the id of the served model, {model_id!r} (GET /v1/models), got {model!r}",
            status=400 if not isinstance(model, str) else 404,
            param="model",
            code=None if not isinstance(model, str) else "model_not_found",
        )
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise ApiError("text is required: a non-empty string", param="text")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ApiError(f"seed must be an integer in [0, 2^63), got {seed!r}", param="seed")
    ext = body.get("dlm") if body.get("dlm") is not None else {}
    if not isinstance(ext, dict) or "stream_denoising" in ext:
        raise ApiError("dlm must be an object of sampler settings (these endpoints do not stream)", param="dlm")
    if "sampler" not in ext:  # the model's first sampler that can infill
        try:
            ext = {"sampler": engine.infill_sampler_config()[0], **ext}
        except DlmError as e:
            raise ApiError(str(e).replace("--", ""), param="model") from None
    sampler, options = sampler_options({}, ext, engine)
    config = checked_config(engine.infill_sampler_config, sampler, options)
    make = infill_task if kind == "infill" else edit_task
    return make(body, engine, text, sampler, config, options, seed, limits)


def infill_task(body, engine, text, sampler, config, options, seed, limits) -> Task:
    from dlm.infill import encode_pieces, parse_holes

    try:
        template = parse_holes(text)
    except DlmError as e:
        raise ApiError(str(e), param="text") from None
    lengths = body.get("lengths")
    if lengths is not None:
        if not isinstance(lengths, list) or not lengths or len(lengths) > 64:
            raise ApiError("lengths must be a list of 1 to 64 candidate hole lengths (tokens)", param="lengths")
        for n in lengths:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ApiError(f"lengths must hold integers >= 1, got {n!r}", param="lengths")
    nelbo_samples = integer(body, "nelbo_samples", 16, 1, 256)
    if lengths is None and "nelbo_samples" in body:
        raise ApiError("nelbo_samples scores candidate lengths: it needs lengths", param="nelbo_samples")
    tok, cfg = engine.tokenizer, engine.config
    pieces = encode_pieces(tok, template.pieces)
    widest = max(lengths or [0])
    holes = sum(max(n, widest) for n in template.lengths)
    if holes > limits.max_tokens:
        raise ApiError(f"the holes hold {holes} tokens; this server fills at most {limits.max_tokens}", param="text")
    total = (1 if cfg.model.logits_shift else 0) + sum(map(len, pieces)) + holes
    if total > cfg.model.max_seq_len:
        raise ApiError(
            f"the text with its holes ({total} tokens) exceeds the model's context of {cfg.model.max_seq_len} "
            "tokens; shorten the text or the holes",
            param="text",
            code="context_length_exceeded",
        )

    def run(on_step):
        extra = {} if lengths is None else {"lengths": lengths, "nelbo_samples": nelbo_samples}
        r = engine.infill_ids(pieces, list(template.lengths), sampler, seed, on_step, **extra, **options)
        out = {"text": r.text, "fills": r.fills, "holes": [list(h) for h in r.holes], "nfe": r.nfe}
        out.update(seconds=r.seconds, completion_tokens=sum(b - a for a, b in r.holes))
        if r.nelbo is not None:
            out["nelbo"] = [{str(n): round(v, 4) for n, v in table.items()} for table in r.nelbo]
        return out

    return Task("infill", sampler, config, seed, run, max_tokens=holes)


def edit_task(body, engine, text, sampler, config, options, seed, limits) -> Task:
    from dlm.edit import can_score

    spans = body.get("spans")
    if spans is not None:
        ok = isinstance(spans, list) and 0 < len(spans) <= 64
        ok = ok and all(isinstance(s, list) and len(s) == 2 and all(type(i) is int for i in s) for s in spans)
        if not ok:
            raise ApiError("spans must be a list of [start, end] character offsets (end exclusive)", param="spans")
        for start, end in spans:
            if not 0 <= start < end <= len(text):
                raise ApiError(
                    f"span [{start}, {end}] is not inside the text: 0 <= start < end <= {len(text)}", param="spans"
                )
    rounds = integer(body, "rounds", 1, 1, 16)
    below = body.get("below")
    if below is not None and (isinstance(below, bool) or not isinstance(below, (int, float)) or not 0 < below <= 1):
        raise ApiError(f"below must be a probability in (0, 1], got {below!r}", param="below")
    remask_k = None if body.get("remask_k") is None else integer(body, "remask_k", None, 1, None)
    if spans and (below is not None or remask_k is not None):
        raise ApiError("spans name the tokens to re-mask; below and remask_k choose them by score: give one")
    if below is not None and remask_k is not None:
        raise ApiError("give below or remask_k, not both", param="below")
    if not spans and not can_score(engine.config):
        raise ApiError(
            f"choosing tokens by score needs a model that reads a masked position (mdlm), not "
            f"{engine.config.train.objective}; name the tokens with spans",
            param="spans",
        )
    tok, cfg = engine.tokenizer, engine.config
    ids = tok.encode(text)
    total = (1 if cfg.model.logits_shift else 0) + len(ids)
    if total > cfg.model.max_seq_len:
        raise ApiError(
            f"the text ({len(ids)} tokens) exceeds the model's context of {cfg.model.max_seq_len} tokens; shorten it",
            param="text",
            code="context_length_exceeded",
        )
    if remask_k is not None and remask_k > len(ids):
        raise ApiError(f"remask_k must be at most the text's {len(ids)} tokens", param="remask_k")
    choose = {"spans": [tuple(s) for s in spans]} if spans else {"below": below, "remask_k": remask_k}

    def run(on_step):
        r = engine.edit(text, sampler, seed, rounds=rounds, **choose, **options)
        out = {"text": r.text, "original": r.original, "diff": r.diff, "positions": r.positions}
        out.update(rounds=r.rounds, nfe=r.nfe, seconds=r.seconds, completion_tokens=len(r.positions))
        return out

    return Task("edit", sampler, config, seed, run, max_tokens=len(ids))
