"""One statistical criterion for "the sampler draws this distribution", stated once: Pearson's chi-square
goodness-of-fit test at level ``LEVEL`` over every sequence of an enumerable toy, with a fixed seed (so the test is
deterministic: it fails only if the sampler's distribution moved, or, for a correct sampler, with probability LEVEL
over the choice of that seed)."""

from __future__ import annotations

import math

import torch

LEVEL = 1e-3
Z = {1e-2: 2.3263, 1e-3: 3.0902, 1e-4: 3.7190}  # standard normal upper quantiles


def chi2_critical(df: int, level: float = LEVEL) -> float:
    """The upper ``level`` quantile of chi-square(df), by Wilson and Hilferty's cube-root normal approximation
    (relative error < 1% for df >= 3 at these levels)."""
    z, k = Z[level], 2.0 / (9.0 * df)
    return df * (1.0 - k + z * math.sqrt(k)) ** 3


def chi2_statistic(tokens: torch.Tensor, seqs: torch.Tensor, p: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic of the draws ``tokens`` [N, L] against the distribution ``p`` over ``seqs`` [S, L] and its
    degrees of freedom; cells with fewer than 5 expected draws are pooled into one (the usual validity condition
    of the chi-square approximation). A draw outside ``seqs`` is an error."""
    hit = (tokens[:, None, :] == seqs[None]).all(-1)  # (N, S)
    outside = int((~hit.any(1)).sum())
    assert outside == 0, f"{outside} draws are not sequences of the toy"
    n = tokens.shape[0]
    observed, expected = hit.double().sum(0), n * p.double()
    small = expected < 5
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    return float(((observed - expected) ** 2 / expected).sum()), len(expected) - 1


def assert_draws(tokens: torch.Tensor, seqs: torch.Tensor, p: torch.Tensor, level: float = LEVEL) -> float:
    """The draws pass the chi-square test at ``level``; returns the statistic."""
    stat, df = chi2_statistic(tokens, seqs, p)
    critical = chi2_critical(df, level)
    assert stat < critical, f"chi-square {stat:.1f} >= {critical:.1f} (df {df}, level {level})"
    return stat


def assert_tight(draws: torch.Tensor, truth: torch.Tensor) -> None:
    """One-draw estimates ``draws`` [R, S] of a bound on -log p of S sequences (R independent draws each) have
    mean ``truth`` [S]: per sequence within 4 standard errors + 0.01 nats, and their mean over the sequences within
    4 pooled standard errors + 0.005 nats (the 0.01 / 0.005 absorb the bounds' O(t_min) omitted part)."""
    draws, truth = draws.double(), truth.double()
    R = draws.shape[0]
    mean, stderr = draws.mean(0), draws.std(0) / R**0.5
    assert torch.all((mean - truth).abs() < 4 * stderr + 0.01), ((mean - truth) / stderr).abs().max()
    pooled_err = (mean - truth).mean().abs()
    assert pooled_err < 4 * (stderr**2).mean().sqrt() / len(truth) ** 0.5 + 0.005, pooled_err
