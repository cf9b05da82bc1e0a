"""Token draws in float64: uniforms, Gumbel noise, temperature, top-k and top-p.

Float32 Gumbel-max caps the noise (u cannot get closer to 0 or 1 than float32 allows) and silently lowers the
temperature; every sampler draws in float64 through these functions. ``sample_categorical`` inverts the float64
CDF with one uniform per position (V times fewer random numbers than Gumbel-max: it matters when a whole canvas of
an 8192-token vocabulary is drawn at every step); the confidence sampler keeps LLaDA's Gumbel-max.

``generator`` is one ``torch.Generator`` for the whole batch, or one per row. With one per row, row j draws its own
numbers from ``generators[j]``, only while ``rows[j]`` is True and only for its columns from ``starts[j]`` on (where
its left padding ends), so a row's draws, and hence its sample, do not depend on the batch it is generated in.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def uniform(shape, *, generator: Generators = None, device="cpu", rows=None, starts=None) -> torch.Tensor:
    """U(0, 1) samples in float64 of ``shape`` (rows that draw nothing are 0)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(shape, dtype=torch.float64, generator=generator, device=device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} rows")
    out = torch.zeros(shape, dtype=torch.float64, device=device)
    for j, g in enumerate(generator):
        if rows is None or rows[j]:
            if len(shape) == 1:
                out[j] = torch.rand((), dtype=torch.float64, generator=g, device=device)
                continue
            start = 0 if starts is None else int(starts[j])
            out[j, start:] = torch.rand((shape[1] - start, *shape[2:]), dtype=torch.float64, generator=g, device=device)
    return out


def gumbel_noise(shape, *, generator: Generators = None, device="cpu", rows=None, starts=None) -> torch.Tensor:
    """Standard Gumbel samples, float64: -log(-log u), u ~ U(0, 1)."""
    u = uniform(shape, generator=generator, device=device, rows=rows, starts=starts)
    tiny = torch.finfo(torch.float64).tiny
    return -torch.log(-torch.log(u.clamp_min(tiny)))


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (the most likely token always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already reaches top_p
        drop_sorted[..., 0] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: Generators = None,
    rows=None,
    starts=None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token per position from softmax(logits / temperature) in float64 (argmax when temperature = 0):
    the first token whose CDF exceeds u * total, u ~ U[0, 1), so a token of probability 0 is never drawn. Pass ``u``
    (one uniform per position) to draw at a subset of positions with uniforms drawn for all of them."""
    logits = logits.double()
    if temperature == 0.0:
        return logits.argmax(-1)
    cdf = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(-1).cumsum(-1)  # (..., V)
    if u is None:
        u = uniform(logits.shape[:-1], generator=generator, device=logits.device, rows=rows, starts=starts)
    token = torch.searchsorted(cdf, (u * cdf[..., -1]).unsqueeze(-1), right=True).squeeze(-1)
    return token.clamp_max(logits.shape[-1] - 1)
