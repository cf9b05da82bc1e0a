"""Token draws in float64: uniforms, Gumbel noise, temperature, top-k and top-p.

Float32 Gumbel-max caps the noise (u cannot get closer to 0 or 1 than float32 allows) and silently lowers the
temperature; every sampler draws in float64 through these functions, by Gumbel-max. (Inverting the CDF would need
V times fewer random numbers, but a float32 rounding difference in the logits moves every CDF boundary and flips
the draw about V times more often than it flips a Gumbel-max, which breaks "same sample in any batch".)

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
) -> torch.Tensor:
    """Draw one token per position from softmax(logits / temperature) in float64 (argmax when temperature = 0)."""
    logits = logits.double()
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    noise = gumbel_noise(logits.shape, generator=generator, device=logits.device, rows=rows, starts=starts)
    return (logits + noise).argmax(-1)
