"""The Engine: text in, text out, for every front end (``dlm sample``, ``dlm bench sample``, bench/ scripts, tests).

    engine = dlm.Engine.load("runs/tiny")                   # or dlm.Engine(model, tokenizer, run_config)
    [result] = engine.generate(["Emma was"], sampler="confidence", gen_length=32, steps=32, block_length=8)
    print(result.text, result.nfe, result.seconds)

``generate(prompts, sampler=None, seed=0, on_step=None, **options)``: ``options`` are the sampler's own (its
config dataclass, e.g. ``ConfidenceConfig``: steps, block_length, temperature, threshold, cache, ...; one that does
not apply to the sampler is an error) and the Engine's: ``gen_length`` (tokens to generate), ``stop_at_eos`` (end a
sample at its first stop token: EOS, or any end-of-turn id of the tokenizer), ``batch_size`` (samples run
together, left-padded), ``history`` (keep every intermediate canvas). Prompt i draws from its own generator seeded
``seed + i`` (or ``seed[i]`` when ``seed`` is a list: one seed per prompt, as the server gives each request its
own), so a prompt's sample does not depend on the batch it runs in.

``infill(text, sampler=None, seed=0, on_step=None, *, lengths=None, **options) -> InfillResult``: the holes of
``text`` (``[MASK]`` one token, ``[MASK*N]`` N tokens) filled with everything else fixed, by a sampler that reads
both sides (``dlm.infill``). ``edit(text, *, spans=None, rounds=1, below=None, remask_k=None, **options) ->
EditResult``: Instant Edit, the named spans or the least likely tokens re-masked and regenerated (``dlm.edit``).
``chat(messages, sampler=None, seed=0, on_step=None, *, gen_length=64, stop=(), **options) -> ChatResult``: the
assistant's answer to a conversation, rendered by the tokenizer's chat template, the oldest turns dropped when it
outgrows the context (``dlm.chat``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from dlm.errors import DlmError, DlmTypeError
from dlm.samplers import SAMPLERS, SampleBatch, model_facts, run_sampler


@dataclass
class Result:
    prompt: str
    text: str  # the continuation (up to its first stop token with stop_at_eos)
    tokens: list[int]  # its token ids
    nfe: int  # model calls of the batch it was generated in
    seconds: float  # wall time of that batch
    history: list[str] | None = None  # the rendered canvas after every step (history=True)


def render(tokenizer, ids) -> str:
    """Text of token ids with masks shown as ░ and padding dropped."""
    if tokenizer.pad_id not in tokenizer.stop_ids:  # a pad that is also a stop token (EOS) stays visible
        ids = [i for i in ids if i != tokenizer.pad_id]
    if tokenizer.mask_id is None:
        return tokenizer.decode(ids, skip_special_tokens=False)
    mask = tokenizer.decode([tokenizer.mask_id], skip_special_tokens=False)
    return tokenizer.decode(ids, skip_special_tokens=False).replace(mask, "░")


class Engine:
    """A loaded model with its tokenizer and run config, and the samplers that apply to it."""

    def __init__(self, model, tokenizer, run_config):
        self.model, self.tokenizer, self.config = model, tokenizer, run_config

    @classmethod
    def load(cls, path, **kw) -> "Engine":
        from dlm.loader import load

        return cls(*load(path, **kw))

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers that fit the model's objective; the first is the default."""
        from dlm.objectives import OBJECTIVES

        return OBJECTIVES.get(self.config.train.objective).samplers

    def sampler_config(self, sampler: str | None = None, **options):
        """(name, frozen config) of ``sampler`` (default: the model's own) with ``options``; inapplicable options
        and samplers are one-line errors."""
        name = sampler or self.samplers[0]
        entry = SAMPLERS.get(name)
        if name not in self.samplers:
            raise DlmError(
                f"sampler {name!r} does not apply to a model trained with --objective "
                f"{self.config.train.objective}; use one of: {', '.join(self.samplers)}"
            )
        return name, entry.make_config(options, model_facts(self.config))

    def generate(
        self,
        prompts: str | list[str],
        sampler: str | None = None,
        seed: int | Sequence[int] = 0,
        on_step=None,
        **options,
    ) -> list[Result]:
        """One continuation per prompt (see the module docstring)."""
        from dlm.data.tokenizer import check_text

        if not isinstance(prompts, (str, list, tuple)):
            raise DlmTypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompts = [check_text(p, f"prompt {i}") for i, p in enumerate(prompts)]
        return self.generate_ids([self.tokenizer.encode(p) for p in prompts], sampler, seed, on_step, **options)

    def generate_ids(
        self,
        prompts: list[list[int]],
        sampler: str | None = None,
        seed: int | Sequence[int] = 0,
        on_step=None,
        *,
        gen_length: int = 64,
        stop_at_eos: bool = True,
        batch_size: int = 16,
        history: bool = False,
        **options,
    ) -> list[Result]:
        """``generate`` for prompts given as token ids."""
        if not prompts:
            raise DlmError("there must be at least one prompt")
        check_prompt_ids(prompts, self.config.model.vocab_size)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (gen_length, batch_size)):
            raise DlmTypeError(f"gen_length and batch_size must be ints, got {gen_length!r} and {batch_size!r}")
        if gen_length <= 0 or batch_size <= 0:
            raise DlmError(f"gen_length and batch_size must be positive, got {gen_length} and {batch_size}")
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != len(prompts):
            raise DlmError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt, or one int")
        name, config = self.sampler_config(sampler, **options)
        entry, tok = SAMPLERS.get(name), self.tokenizer
        if tok.mask_id is None and name != "ar":
            raise DlmError(f"the {name} sampler needs a mask token, and this model's tokenizer has none")
        # a shifted model scores position i at i - 1: the start token (BOS) stands before every prompt; the ar
        # sampler puts it first itself. A prompt that already begins with BOS (a chat template that writes it, as
        # SmolLM2's ChatML does) gets no second one: the model reads BOS + prompt either way.
        shift = self.config.model.logits_shift
        strip = name == "ar" or shift
        inputs = [list(r[1:]) if strip and len(r) and r[0] == tok.bos_id else list(r) for r in prompts]
        bos = [tok.bos_id] if shift and name != "ar" else []
        longest, context = max(len(e) for e in inputs) + len(bos), self.config.model.max_seq_len
        if longest + gen_length > context:
            raise DlmError(
                f"prompt ({longest} tokens) + gen-length ({gen_length}) exceeds the model's context of "
                f"{context} tokens; shorten the prompt or lower --gen-length"
            )
        device = model_device(self.model)
        results: list[Result] = []
        for first in range(0, len(prompts), batch_size):
            rows = prompts[first : first + batch_size]
            batch = SampleBatch.from_prompts(
                [bos + r for r in inputs[first : first + batch_size]],
                gen_length,
                mask_id=tok.eos_id if tok.mask_id is None else tok.mask_id,  # ar: never read
                eos_id=tok.eos_id,
                pad_id=tok.pad_id,
                stop_ids=tok.stop_ids,
                bos_id=tok.bos_id,
            ).to(device)
            generators = [torch.Generator(device=device).manual_seed(seeds[first + i]) for i in range(len(rows))]
            start = time.perf_counter()
            out = run_sampler(
                entry, self.model, batch, config, generators, on_step, stop_at_eos=stop_at_eos, history=history
            )
            seconds = time.perf_counter() - start
            for j, row in enumerate(out.tokens[:, batch.prompt_len :].tolist()):
                if stop_at_eos:
                    ends = [k for k, token in enumerate(row) if token in tok.stop_ids]
                    row = row[: ends[0]] if ends else row
                steps = None if out.history is None else [render(tok, s.tolist()) for s in out.history[j]]
                results.append(Result(render(tok, rows[j]), render(tok, row), row, out.nfe, seconds, steps))
        return results

    # --- infilling and editing (dlm.infill, dlm.edit) -----------------------------------------------------------

    def infill_sampler_config(self, sampler: str | None = None, **options):
        """(name, frozen config) of an infilling sampler: ``sampler``, or the model's first that can infill; a
        model or sampler that cannot infill is a one-line error naming the samplers that can."""
        from dlm.objectives import OBJECTIVES
        from dlm.samplers import infill_samplers

        able = infill_samplers()
        own = [name for name in self.samplers if name in able]
        if sampler is None and not own:
            trained = [o for o in OBJECTIVES.names() if set(OBJECTIVES.get(o).samplers) & set(able)]
            raise DlmError(
                f"a model trained with --objective {self.config.train.objective} cannot infill: its samplers "
                f"({', '.join(self.samplers)}) do not read both sides of a hole; the samplers that can infill are "
                f"{', '.join(able)} (models trained with --objective {', '.join(trained)})"
            )
        if sampler is not None and sampler not in able:
            SAMPLERS.get(sampler)  # an unknown name lists the registered ones
            use = f"use one of: {', '.join(own)}" if own else f"the samplers that can infill are {', '.join(able)}"
            raise DlmError(f"the {sampler} sampler cannot infill (it does not read both sides of a hole); {use}")
        name, config = self.sampler_config(sampler or own[0], **options)
        if self.tokenizer.mask_id is None:
            raise DlmError(f"the {name} sampler needs a mask token, and this model's tokenizer has none")
        return name, config

    def infill(self, text: str, sampler: str | None = None, seed: int = 0, on_step=None, **options):
        """The holes of ``text`` filled, everything else fixed: an ``InfillResult`` (see ``dlm.infill``).
        Options: ``lengths`` (candidate lengths of every hole, chosen by NELBO), ``nelbo_samples``,
        ``batch_size``, ``history``, and the sampler's own."""
        from dlm.infill import encode_pieces, parse_holes

        template = parse_holes(text)
        pieces = encode_pieces(self.tokenizer, template.pieces)
        return self.infill_ids(pieces, template.lengths, sampler, seed, on_step, **options)

    def infill_ids(
        self, pieces: list[list[int]], hole_lengths: list[int], sampler=None, seed: int = 0, on_step=None, **options
    ):
        """``infill`` for token pieces around holes of ``hole_lengths`` tokens (len(pieces) = holes + 1)."""
        from dlm.infill import infill_ids

        return infill_ids(self, pieces, hole_lengths, sampler, seed, on_step, **options)

    def chat(self, messages: list[dict], sampler: str | None = None, seed: int = 0, on_step=None, **options):
        """The assistant's answer to a conversation [{role, content}, ...]: a ``ChatResult`` (see ``dlm.chat``).
        Options: ``gen_length``, ``stop`` (strings), and the sampler's own."""
        from dlm.chat import chat

        return chat(self, messages, sampler, seed, on_step, **options)

    def edit(self, text: str, sampler: str | None = None, seed: int = 0, **options):
        """Instant Edit of ``text``: an ``EditResult`` (see ``dlm.edit``). Options: ``spans`` ((start, end)
        character offsets), ``rounds``, ``below`` or ``remask_k``, ``batch_size``, and the sampler's own."""
        from dlm.edit import edit

        return edit(self, text, sampler, seed, **options)


def check_prompt_ids(prompts, vocab_size: int) -> None:
    """One-line errors unless ``prompts`` is a list of token-id lists, each id in [0, vocab_size)."""
    if not isinstance(prompts, (list, tuple)):
        raise DlmTypeError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    for i, row in enumerate(prompts):
        if isinstance(row, torch.Tensor):
            row = row.tolist()
        if not isinstance(row, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
            raise DlmTypeError(f"prompt {i} must be a list of int token ids, got {row!r:.60}")
        bad = [t for t in row if not 0 <= t < vocab_size]
        if bad:
            raise DlmError(f"prompt {i} holds the token id {bad[0]}, outside the model's vocabulary [0, {vocab_size})")


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")
