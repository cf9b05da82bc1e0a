"""Draws the toy distribution: every sampler that can be given an exact model of the enumerable toy
(``tests/toy.py``; the case table's ``toys``) draws its distribution over all sequences, by the chi-square test of
``stats.py`` (N draws, level 1e-3, fixed seed). The criterion is checked once too: it accepts exact draws of the
toy and rejects its product of marginals (what a sampler that draws every position at once would give)."""

from __future__ import annotations

import pytest
import torch

from dlm.samplers import SAMPLERS, SampleBatch, run_sampler

from .cases import case
from .stats import assert_draws, chi2_critical, chi2_statistic

N = 2000
TOY_CASES = [(name, toy) for name in SAMPLERS.names() for toy in case(name).toys]


@pytest.mark.parametrize("name,toy_case", TOY_CASES, ids=[f"{n}-{t.label}" for n, t in TOY_CASES])
def test_the_sampler_with_the_exact_model_draws_the_toy_distribution(name, toy_case):
    toy, model, facts, options = toy_case.make()
    entry = SAMPLERS.get(name)
    batch = SampleBatch.from_prompts([[]] * N, toy.L, mask_id=toy.mask_id, eos_id=toy.eos_id)
    out = run_sampler(entry, model, batch, entry.make_config(options, facts), torch.Generator().manual_seed(0))
    assert_draws(out.tokens, toy.seqs, toy.p)


def test_the_criterion_accepts_the_toy_and_rejects_its_product_of_marginals():
    toy = case("ancestral").toys[0].make()[0]
    g = torch.Generator().manual_seed(0)
    exact = toy.seqs[torch.multinomial(toy.p, N, replacement=True, generator=g)]
    assert_draws(exact, toy.seqs, toy.p)
    marginals = [(toy.p[:, None] * (toy.seqs[:, l : l + 1] == torch.arange(toy.V))).sum(0) for l in range(toy.L)]
    product = torch.stack([torch.multinomial(m, N, replacement=True, generator=g) for m in marginals], 1)
    stat, df = chi2_statistic(product, toy.seqs, toy.p)
    assert stat > chi2_critical(df)
