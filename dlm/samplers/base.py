"""The one sampler interface, and the wrapper that every front end runs samplers through.

Every registered sampler is a function

    generate(model, batch: SampleBatch, config, generators, on_step=None) -> SampleOutput(tokens, nfe)

with its own frozen config dataclass (a ``SamplerConfig``). ``batch`` holds the canvas: the left-padded prompts
followed by ``gen_length`` masks, which positions are fixed and which are padding. For infilling
(``SampleBatch.from_canvases``) the fixed positions are any mask [B, L]: text on both sides of holes; the
samplers registered with ``infills=True`` change only the positions that are not fixed and condition on the others
(the rest generate after a prompt only, and ``run_sampler`` refuses them such a batch). ``generators`` is one
``torch.Generator`` per row (or one for the batch, or None). ``on_step(state)`` is called after every denoising
step with a ``SampleState`` (the canvas, which positions are committed, masked, provisional) and may return False
to stop the generation there. A step makes at most one model call (CFG runs its two rows in that call); a step
that changes nothing may reuse the previous call (``ReuseLogits``), and cached samplers add calls that fill their
KV cache.

``steps`` means the same for every sampler: the number of denoising steps of the whole generation (default: one
per generated token); with a confidence threshold it is the cap.

``run_sampler`` is the wrapper: it runs samplers that cannot batch left-padded rows (or per-row generators) row by
row, stops when every row has ended at ``<|endoftext|>`` and trims what follows it, and records the history of
canvases. Samplers do none of that themselves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from dlm.errors import DlmError
from dlm.noise.categorical import Generators

MODEL = {"model": True}  # dataclass field metadata: a fact about the model, filled in from its run config


@dataclass(frozen=True)
class SampleBatch:
    """The canvas of a batch: tokens [B, L] (prompt columns 0..prompt_len-1, left-padded, then the generated
    region), ``fixed`` [B, L] (positions a sampler never changes: the prompt and the padding; for infilling also
    the text between and after holes, so that the generated region starts at the first hole), ``real`` [B, L]
    (False at padding; None when nothing is padded) and the special ids: ``stop_ids`` every id that ends a
    sample (default: ``eos_id`` alone; a chat model's end-of-turn ids too), ``bos_id`` the AR start token
    (default: ``eos_id``)."""

    tokens: torch.Tensor
    fixed: torch.Tensor
    real: torch.Tensor | None
    prompt_len: int
    mask_id: int
    eos_id: int | None = None
    pad_id: int | None = None
    stop_ids: tuple[int, ...] = ()
    bos_id: int | None = None

    @property
    def stops(self) -> tuple[int, ...]:
        """The ids that end a sample (``stop_ids``, else ``eos_id``)."""
        return self.stop_ids or (() if self.eos_id is None else (self.eos_id,))

    @property
    def start_id(self) -> int | None:
        """The AR start token: ``bos_id``, else ``eos_id``."""
        return self.eos_id if self.bos_id is None else self.bos_id

    @classmethod
    def from_prompts(
        cls,
        prompts: Sequence[Sequence[int]],
        gen_length: int,
        *,
        mask_id: int,
        eos_id: int | None = None,
        pad_id: int | None = None,
        stop_ids: Sequence[int] = (),
        bos_id: int | None = None,
    ) -> "SampleBatch":
        """Token lists -> a batch: prompts left-padded with ``pad_id``, then ``gen_length`` masks."""
        if gen_length <= 0:
            raise DlmError(f"gen_length must be positive, got {gen_length}")
        width = max((len(p) for p in prompts), default=0)
        B = len(prompts)
        if B == 0:
            raise DlmError("there must be at least one prompt")
        tokens = torch.full((B, width + gen_length), mask_id, dtype=torch.long)
        real = torch.ones((B, width + gen_length), dtype=torch.bool)
        for j, p in enumerate(prompts):
            tokens[j, : width - len(p)] = mask_id if pad_id is None else pad_id
            real[j, : width - len(p)] = False
            if p:
                tokens[j, width - len(p) : width] = torch.tensor(list(p), dtype=torch.long)
        fixed = torch.zeros_like(real)
        fixed[:, :width] = True
        real = None if bool(real.all()) else real
        return cls(tokens, fixed, real, width, mask_id, eos_id, pad_id, tuple(stop_ids), bos_id)

    @classmethod
    def from_canvases(
        cls,
        canvases: Sequence[Sequence[int]],
        fixed: Sequence[Sequence[bool]],
        *,
        mask_id: int,
        eos_id: int | None = None,
        pad_id: int | None = None,
        stop_ids: Sequence[int] = (),
        bos_id: int | None = None,
    ) -> "SampleBatch":
        """Canvases of any lengths with their fixed positions (True: kept as it is; False: a hole, set to
        ``mask_id``) -> a batch, left-padded with ``pad_id``; ``prompt_len`` is the first column where some row has
        a hole. Every row needs at least one hole."""
        if len(canvases) == 0 or len(canvases) != len(fixed):
            raise DlmError("there must be at least one canvas, and one fixed mask per canvas")
        if any(len(c) != len(f) for c, f in zip(canvases, fixed)):
            raise DlmError("each canvas needs a fixed mask of its own length")
        if not all(not all(f) for f in fixed):
            raise DlmError("every canvas needs at least one position that is not fixed (a hole)")
        width = max(len(c) for c in canvases)
        B = len(canvases)
        tokens = torch.full((B, width), mask_id if pad_id is None else pad_id, dtype=torch.long)
        keep = torch.ones((B, width), dtype=torch.bool)  # padding is fixed
        real = torch.zeros((B, width), dtype=torch.bool)
        for j, (c, f) in enumerate(zip(canvases, fixed)):
            pad = width - len(c)
            keep[j, pad:] = torch.tensor(list(f), dtype=torch.bool)
            tokens[j, pad:] = torch.where(keep[j, pad:], torch.tensor(list(c), dtype=torch.long), mask_id)
            real[j, pad:] = True
        prompt_len = int((~keep).any(0).long().argmax())  # the first column with a hole
        real = None if bool(real.all()) else real
        return cls(tokens, keep, real, prompt_len, mask_id, eos_id, pad_id, tuple(stop_ids), bos_id)

    @classmethod
    def from_tensor(
        cls,
        prompt: torch.Tensor,
        gen_length: int,
        *,
        mask_id: int,
        prompt_mask=None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        stop_ids: Sequence[int] = (),
        bos_id: int | None = None,
    ) -> "SampleBatch":
        """A prompt tensor [B, Lp] (``prompt_mask`` [B, Lp]: its real tokens, left-padded) -> a batch."""
        B, Lp = prompt.shape
        tokens = torch.cat([prompt, prompt.new_full((B, gen_length), mask_id)], 1)
        fixed = torch.zeros_like(tokens, dtype=torch.bool)
        fixed[:, :Lp] = True
        real = None
        if prompt_mask is not None and not bool(prompt_mask.all()):
            real = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(B, gen_length, dtype=torch.bool)], 1)
        return cls(tokens, fixed, real, Lp, mask_id, eos_id, pad_id, tuple(stop_ids), bos_id)

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @property
    def gen_length(self) -> int:
        return self.tokens.shape[1] - self.prompt_len

    @property
    def open_length(self) -> int:
        """The most positions a row may change: ``gen_length`` after a prompt, the holes' tokens when infilling
        (what "one step per generated token" counts)."""
        return int((~self.fixed).sum(1).max())

    @property
    def infilling(self) -> bool:
        """Does the generated region hold fixed positions (text after a hole)?"""
        return bool(self.fixed[:, self.prompt_len :].any())

    @property
    def prompt(self) -> torch.Tensor:
        return self.tokens[:, : self.prompt_len]

    @property
    def padded(self) -> bool:
        return self.real is not None

    def pads(self) -> torch.Tensor | None:
        """Padding columns per row [B] (where each row's own tokens start), or None."""
        return None if self.real is None else (~self.real).sum(1)

    def attention(self, width: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(key mask [B, W], RoPE positions [B, W]) for a canvas of ``width`` columns (default: the batch's) that
        starts with this batch's columns: padding is never attended to and positions count only real tokens;
        (None, None) without padding, so the model runs exactly as on unpadded input."""
        if self.real is None:
            return None, None
        width = self.tokens.shape[1] if width is None else width
        keys = self.real[:, :width]
        if width > keys.shape[1]:
            keys = torch.cat([keys, keys.new_ones(keys.shape[0], width - keys.shape[1])], 1)
        return keys, (keys.long().cumsum(1) - 1).clamp_min(0)

    def row(self, j: int) -> "SampleBatch":
        """Row j without its padding, as a batch of one."""
        keep = slice(None) if self.real is None else self.real[j]
        tokens = self.tokens[j : j + 1, keep]
        pads = 0 if self.real is None else int((~self.real[j]).sum())
        fixed = self.fixed[j : j + 1, keep]
        # an infilling row may be padded past the first hole of another row: its generated region starts at 0
        return replace(self, tokens=tokens, fixed=fixed, real=None, prompt_len=max(0, self.prompt_len - pads))

    def to(self, device) -> "SampleBatch":
        """The batch on ``device``."""
        if self.tokens.device == torch.device(device):
            return self
        real = None if self.real is None else self.real.to(device)
        return replace(self, tokens=self.tokens.to(device), fixed=self.fixed.to(device), real=real)


@dataclass
class SampleState:
    """What ``on_step`` sees after a denoising step: the canvas and the status of every position, each [B, L].

    ``committed``: will not change again (the prompt included); ``masked``: still the mask token (None for
    processes without one); ``provisional`` / ``confidence``: the current candidates at uncommitted positions and
    their scores, where the sampler has them (else None). ``step`` counts denoising steps from 1."""

    tokens: torch.Tensor
    committed: torch.Tensor
    step: int
    nfe: int
    masked: torch.Tensor | None = None
    provisional: torch.Tensor | None = None
    confidence: torch.Tensor | None = None


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # [B, L]: the finished canvas
    nfe: int  # model calls
    history: list[list[torch.Tensor]] | None = None  # per row, the canvas [L] after every step (run_sampler)


OnStep = Callable[[SampleState], "bool | None"]


def report(on_step: OnStep | None, state_fn: Callable[[], SampleState]) -> bool:
    """Call ``on_step`` with the state (built only when someone listens); False means stop."""
    return on_step is None or on_step(state_fn()) is not False


class ReuseLogits:
    """A model call that is skipped while its input is unchanged (MDLM's cache: a step that reveals nothing leaves
    the canvas as it was), unless the model is time-conditioned. Counts the calls it makes in ``nfe``."""

    def __init__(self, call: Callable[..., torch.Tensor], reusable: bool = True):
        self.call, self.reusable, self.nfe = call, reusable, 0
        self._x: torch.Tensor | None = None
        self._out: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, *args) -> torch.Tensor:
        if not (self.reusable and self._x is not None and torch.equal(x, self._x)):
            self._out, self._x = self.call(x, *args), x.clone()
            self.nfe += 1
        return self._out


# ----------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SamplerConfig:
    """Base of every sampler's frozen config: the shared options are validated here, once, at construction."""

    def __post_init__(self):
        get = lambda name: getattr(self, name, None)  # noqa: E731
        t = get("temperature")
        if t is not None and not (math.isfinite(t) and t >= 0):
            raise DlmError(f"temperature must be a finite number >= 0, got {t}")
        if get("top_k") is not None and get("top_k") < 0:
            raise DlmError(f"top_k must be >= 0 (0: all tokens), got {get('top_k')}")
        p = get("top_p")
        if p is not None and not 0.0 < p <= 1.0:
            raise DlmError(f"top_p must be in (0, 1], got {p}")
        for name in ("steps", "block_length", "refresh_every"):
            v = get(name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise DlmError(f"{name} must be a positive integer, got {v}")
        tau = get("threshold")
        if tau is not None and not 0.0 <= tau <= 1.0:
            raise DlmError(f"threshold must be in [0, 1] (a probability; 0 commits a whole block per step), got {tau}")
        s = get("cfg_scale")
        if s is not None and not (math.isfinite(s) and s >= 0):
            raise DlmError(f"cfg_scale must be a finite number >= 0 (0: no guidance), got {s}")


def user_fields(config_cls) -> list[str]:
    """The options a user sets (not the model facts)."""
    return [f.name for f in dataclasses.fields(config_cls) if not f.metadata.get("model")]


def model_fields(config_cls) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls) if f.metadata.get("model")]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Sampler:
    """A registry entry: the ``generate`` function, its config class, and what the wrapper must do for it."""

    name: str
    generate: Callable[..., SampleOutput]
    config: type
    pads: bool = True  # runs left-padded rows in one batch
    per_row_generators: bool = True  # can take one generator per row
    infills: bool = False  # keeps any fixed positions and conditions on both sides of a hole (SampleBatch.fixed)

    def make_config(self, options: dict, facts: dict | None = None):
        """The frozen config from user ``options`` and the model's ``facts`` (its run config's settings); an
        option this sampler does not take is a one-line error that lists those it takes."""
        allowed = user_fields(self.config)
        for key in options:
            if key not in allowed:
                takes = ", ".join(flag(f) for f in allowed) or "no options"
                raise DlmError(f"{flag(key)} does not apply to the {self.name} sampler; it takes: {takes}")
        known = {k: v for k, v in (facts or {}).items() if k in model_fields(self.config)}
        return self.config(**known, **options)


# ----------------------------------------------------------------------------------------------- wrapper


def _is_stop(tokens: torch.Tensor, stop) -> torch.Tensor:
    """Where ``tokens`` holds ``stop`` (an id, or a sequence of ids)."""
    if isinstance(stop, int):
        return tokens == stop
    return torch.isin(tokens, torch.tensor(list(stop), dtype=tokens.dtype, device=tokens.device))


def ended_rows(tokens: torch.Tensor, committed: torch.Tensor, start: int, eos_id) -> torch.Tensor:
    """Rows [B] holding a committed ``eos_id`` (an id or a sequence of stop ids) at or after column ``start`` with
    every column before it committed: nothing before their end can change any more."""
    is_eos = _is_stop(tokens[:, start:], eos_id) & committed[:, start:]
    first = is_eos.long().argmax(1)  # (B,) first EOS column (0 where there is none)
    cols = torch.arange(is_eos.shape[1], device=tokens.device)
    still_open = (~committed[:, start:] & (cols[None, :] < first[:, None])).any(1)
    return is_eos.any(1) & ~still_open


def end_at_eos(x: torch.Tensor, start: int, eos_id) -> torch.Tensor:
    """Rows of ``x`` holding ``eos_id`` (an id or a sequence of stop ids) at or after column ``start``: everything
    after their first one becomes that id (in place). Returns which rows ended."""
    is_eos = _is_stop(x[:, start:], eos_id)
    ended = is_eos.any(1)
    first = is_eos.long().argmax(1)
    after = torch.arange(x.shape[1] - start, device=x.device)[None, :] > first[:, None]
    stop = x[:, start:].gather(1, first[:, None])  # (B, 1) the id that ended each row
    x[:, start:] = torch.where(after & ended[:, None], stop, x[:, start:])
    return ended


def run_sampler(
    sampler: Sampler,
    model,
    batch: SampleBatch,
    config,
    generators: Generators = None,
    on_step: OnStep | None = None,
    *,
    stop_at_eos: bool = False,
    history: bool = False,
) -> SampleOutput:
    """Run ``sampler`` on ``batch`` with everything samplers leave to one place: row-by-row fallbacks for padded
    batches (or per-row generators) that the sampler cannot batch, EOS stopping (generation ends once every row
    holds a committed ``<|endoftext|>`` with nothing open before it; what follows a row's first one is returned
    as ``<|endoftext|>``) and the history of canvases (``SampleOutput.history[row][step]``)."""
    if stop_at_eos and batch.eos_id is None:
        raise DlmError("stop_at_eos needs the tokenizer's <|endoftext|> id (SampleBatch.eos_id)")
    if not sampler.infills and batch.infilling:
        raise DlmError(
            f"the {sampler.name} sampler cannot infill: it generates after a prompt only, and this batch has fixed "
            "positions after its first hole; use a sampler registered with infills=True"
        )
    shared = generators is None or isinstance(generators, torch.Generator)
    if (batch.padded and not sampler.pads) or (not shared and not sampler.per_row_generators):
        return _row_by_row(sampler, model, batch, config, generators, on_step, stop_at_eos, history)
    states: list[list[torch.Tensor]] | None = [[] for _ in range(batch.size)] if history else None

    def listen(state: SampleState):
        if states is not None:
            for j in range(batch.size):
                states[j].append(state.tokens[j].clone())
        keep_going = on_step is None or on_step(state) is not False
        if stop_at_eos and bool(ended_rows(state.tokens, state.committed, batch.prompt_len, batch.stops).all()):
            return False
        return keep_going

    listening = on_step is not None or stop_at_eos or history
    out = sampler.generate(model, batch, config, generators, listen if listening else None)
    if stop_at_eos:
        end_at_eos(out.tokens, batch.prompt_len, batch.stops)
    out.history = states
    return out


def _row_by_row(sampler, model, batch, config, generators, on_step, stop_at_eos, history) -> SampleOutput:
    shared = generators is None or isinstance(generators, torch.Generator)
    rows, nfe, states = [], 0, [] if history else None
    for j in range(batch.size):
        one = batch.row(j)
        g = generators if shared else generators[j]
        out = run_sampler(sampler, model, one, config, g, on_step, stop_at_eos=stop_at_eos, history=history)
        pad = batch.tokens[j : j + 1, : batch.tokens.shape[1] - out.tokens.shape[1]]
        rows.append(torch.cat([pad, out.tokens], 1))
        nfe += out.nfe
        if states is not None:
            states.append([torch.cat([pad[0], s]) for s in out.history[0]])
    return SampleOutput(torch.cat(rows), nfe, states)


__all__ = [
    "MODEL",
    "SampleBatch",
    "SampleState",
    "SampleOutput",
    "SamplerConfig",
    "Sampler",
    "ReuseLogits",
    "report",
    "run_sampler",
    "ended_rows",
    "end_at_eos",
    "user_fields",
    "model_fields",
    "flag",
]
