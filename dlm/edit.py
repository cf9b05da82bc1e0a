"""Instant Edit: re-mask the tokens of a finished text that should change, and regenerate them in place.

    engine = dlm.Engine.load("runs/tiny")
    r = engine.edit("It is a truth universally acknowledged", spans=[(8, 13)])    # an EditResult
    r = engine.edit(text, rounds=3, below=0.01)          # or remask_k=4: the tokens the model finds least likely
    print(r.text, r.positions, word_diff(r.original, r.text))

Which tokens: the ``spans`` the user names (character offsets into the text, end exclusive; every token whose
characters overlap a span), or else the tokens whose probability given all the others, p(x^l | x^{-l}), is lowest:
those below ``below``, or the ``remask_k`` lowest (default: a tenth of the tokens, at least one). Under SUBS that
score needs position l masked and everything else visible: one batched pass of L rows, row l the text with only
position l masked, reading the model's distribution at l (``token_scores``; SEDD's absorbing graph reads the same
way: its ratios at a masked position, normalised, are that distribution). The chosen positions become holes and an
infilling sampler (``dlm.infill``) regenerates them with everything else fixed. ``rounds`` repeats choose ->
re-mask -> regenerate (by score: the scores of the current text; spans: the same positions, a new draw each round
with generator ``seed + round``); rounds stop early when nothing is below ``below``. The text is tokenised once:
rounds keep its token positions. ``edit_ids`` edits token ids (its ``positions``: token indices instead of spans).
"""

from __future__ import annotations

import difflib
import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from dlm.errors import DlmError
from dlm.noise.masked import subs_log_probs


@dataclass
class EditResult:
    text: str  # the edited text
    original: str  # the text as tokenised (its tokens decoded)
    tokens: list[int]  # the edited text's ids
    positions: list[int]  # token positions (indices into tokens) re-masked in any round, sorted
    rounds: list[list[int]]  # the positions re-masked in each round
    scores: list[float] | None  # p(token | all the others) of each token of the original (None: the model has no
    #                             masked reading, e.g. a uniform-state or block model editing --span)
    nfe: int  # model calls, the scoring passes included
    seconds: float

    @property
    def diff(self) -> str:
        return word_diff(self.original, self.text)


def can_score(run_config) -> bool:
    """Does the model read a masked position given all the others (mdlm, or sedd on the absorbing graph)?"""
    objective = run_config.train.objective
    return objective == "mdlm" or (objective == "sedd" and run_config.objective_config().graph == "absorb")


@torch.no_grad()
def token_scores(
    model, x: torch.Tensor, *, mask_id: int, first: int = 0, t: torch.Tensor | None = None, batch_size: int = 16
) -> torch.Tensor:
    """p(x^l | x^{-l}) [L - first] (float64) of each position l >= first of x [L]: row l of a batched pass masks
    position l alone (SUBS: the mask is never a candidate); ``t``: the time the model is given (a scalar)."""
    positions = torch.arange(first, x.shape[0], device=x.device)  # (P,)
    out = []
    for chunk in positions.split(batch_size):
        k = chunk.shape[0]
        rows = x.repeat(k, 1)  # (k, L)
        rows[torch.arange(k, device=x.device), chunk] = mask_id
        logits = model(rows, None if t is None else t.expand(k))  # (k, L, V)
        log_p = subs_log_probs(logits[torch.arange(k, device=x.device), chunk].double(), mask_id)  # (k, V)
        out.append(log_p.gather(-1, x[chunk][:, None]).squeeze(-1).exp())  # (k,)
    return torch.cat(out)


def span_positions(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], length: int) -> list[int]:
    """The tokens (by their character ``offsets``) that overlap any span [start, end) of a text of ``length``
    characters."""
    for start, end in spans:
        if not 0 <= start < end <= length:
            raise DlmError(
                f"--span {start}:{end} is not inside the text: spans are START:END character offsets with "
                f"0 <= START < END <= {length} (end exclusive)"
            )
    return [i for i, (a, b) in enumerate(offsets) if any(a < end and b > start for start, end in spans)]


def choose(scores: torch.Tensor, below: float | None, remask_k: int | None) -> list[int]:
    """The positions to re-mask by score: below ``below``, else the ``remask_k`` lowest (ties: the leftmost)."""
    if below is not None:
        return (scores < below).nonzero().flatten().tolist()
    order = scores.argsort(stable=True)
    return sorted(order[:remask_k].tolist())


def word_diff(before: str, after: str) -> str:
    """A word-level diff: ``[-removed-]`` and ``{+added+}`` inline, unchanged words as they are."""
    a, b = before.split(), after.split()
    out = []
    for op, i, j, k, m in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out += a[i:j]
            continue
        if op in ("replace", "delete"):
            out.append("[-" + " ".join(a[i:j]) + "-]")
        if op in ("replace", "insert"):
            out.append("{+" + " ".join(b[k:m]) + "+}")
    return " ".join(out)


def edit(
    engine,
    text: str,
    sampler: str | None = None,
    seed: int = 0,
    *,
    spans: Sequence[tuple[int, int]] | None = None,
    rounds: int = 1,
    below: float | None = None,
    remask_k: int | None = None,
    batch_size: int = 16,
    **options,
) -> EditResult:
    """``Engine.edit`` (see the module docstring): the text tokenised once, ``spans`` turned into token positions,
    then ``edit_ids``."""
    if spans and (below is not None or remask_k is not None):
        raise DlmError("--span names the tokens to re-mask; --below and --remask-k choose them by score: give one")
    ids, offsets = engine.tokenizer.encode_offsets(text)
    if not ids:
        raise DlmError("--text is empty: there is nothing to edit")
    positions = span_positions(offsets, spans, len(text)) if spans else None
    return edit_ids(
        engine, ids, sampler, seed, positions=positions, rounds=rounds, below=below, remask_k=remask_k,
        batch_size=batch_size, **options,
    )  # fmt: skip


def edit_ids(
    engine,
    ids: Sequence[int],
    sampler: str | None = None,
    seed: int = 0,
    *,
    positions: Sequence[int] | None = None,
    rounds: int = 1,
    below: float | None = None,
    remask_k: int | None = None,
    batch_size: int = 16,
    **options,
) -> EditResult:
    """``edit`` of token ids: ``positions`` (indices into ids) re-masked every round, or else the tokens chosen by
    score (``below`` / ``remask_k``, as ``edit``)."""
    from dlm.engine import model_device, render
    from dlm.infill import fill_canvases
    from dlm.noise import get_schedule

    ids = list(ids)
    if rounds < 1 or batch_size < 1:
        raise DlmError(f"--rounds and batch_size must be at least 1, got {rounds} and {batch_size}")
    if positions and (below is not None or remask_k is not None):
        raise DlmError("positions name the tokens to re-mask; below and remask_k choose them by score: give one")
    if below is not None and remask_k is not None:
        raise DlmError("give --below P or --remask-k K, not both")
    if below is not None and not 0.0 < below <= 1.0:
        raise DlmError(f"--below must be a probability in (0, 1], got {below}")
    if not ids:
        raise DlmError("--text is empty: there is nothing to edit")
    if positions and not all(0 <= i < len(ids) for i in positions):
        raise DlmError(f"edit positions must be token indices in [0, {len(ids)}), got {sorted(positions)}")
    name, config = engine.infill_sampler_config(sampler, **options)
    tok, cfg = engine.tokenizer, engine.config
    scored = can_score(cfg)
    if not positions and not scored:
        raise DlmError(
            f"choosing tokens by score masks each in turn and reads the model there: that needs --objective mdlm "
            f"(or sedd with the absorb graph), not {cfg.train.objective}; name the tokens with --span START:END"
        )
    start = [tok.bos_id] if cfg.model.logits_shift else []  # a shifted model scores position i at i - 1
    if len(start) + len(ids) > cfg.model.max_seq_len:
        raise DlmError(
            f"the text ({len(ids)} tokens) exceeds the model's context of {cfg.model.max_seq_len} tokens; shorten it"
        )
    if remask_k is not None and not 1 <= remask_k <= len(ids):
        raise DlmError(f"--remask-k must be between 1 and the text's {len(ids)} tokens, got {remask_k}")
    k = remask_k or max(1, math.ceil(len(ids) / 10))
    device = model_device(engine.model)
    x = torch.tensor(start + ids, device=device)  # (L,)
    # the time at which one of the text's tokens is masked: 1 - alpha(t) = 1 / n
    alpha = torch.tensor(1.0 - 1.0 / len(ids), dtype=torch.float64)
    t = get_schedule(cfg.train.schedule).time_of(alpha).float().to(device)
    calls = -(-len(ids) // batch_size)  # model calls of one scoring pass

    def score(x: torch.Tensor) -> torch.Tensor:
        return token_scores(engine.model, x, mask_id=tok.mask_id, first=len(start), t=t, batch_size=batch_size)

    begin = time.perf_counter()
    first_scores = score(x) if scored else None
    nfe = calls if scored else 0
    fixed_positions = sorted(set(positions)) if positions else None
    chosen_rounds: list[list[int]] = []
    for r in range(rounds):
        if fixed_positions is not None:
            chosen = fixed_positions
        else:
            scores = first_scores if r == 0 else score(x)
            nfe += 0 if r == 0 else calls
            chosen = choose(scores, below, k)
        if not chosen:
            break
        fixed = [True] * x.shape[0]
        for i in chosen:
            fixed[len(start) + i] = False
        rows, n, _, _ = fill_canvases(engine, [x.tolist()], [fixed], name, config, [seed + r])
        x, nfe = torch.tensor(rows[0], device=device), nfe + n
        chosen_rounds.append(chosen)
    tokens = x[len(start) :].tolist()
    changed = sorted({i for chosen in chosen_rounds for i in chosen})
    scores_list = None if first_scores is None else first_scores.tolist()
    return EditResult(
        render(tok, tokens), render(tok, ids), tokens, changed, chosen_rounds, scores_list, nfe,
        time.perf_counter() - begin,
    )  # fmt: skip


__all__ = ["EditResult", "can_score", "token_scores", "span_positions", "choose", "word_diff", "edit", "edit_ids"]
