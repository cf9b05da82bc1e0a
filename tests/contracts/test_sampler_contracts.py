"""The sampler contract suite: every entry of ``dlm.samplers.SAMPLERS`` keeps the same promises (a new entry is
covered for free; ``cases.py`` says which model fits it). Models are tiny and generations short."""

from __future__ import annotations

import pytest
import torch
from helpers import CountingModel

from dlm.errors import DlmError
from dlm.samplers import SAMPLERS, SampleBatch, end_at_eos, run_sampler, user_fields

from .cases import CASES, EOS, MASK, PAD, case, with_options

NAMES = SAMPLERS.names()
G = 8  # generated tokens
PROMPTS = [[5, 6, 7], [8], [1, 2, 3, 4, 5]]  # different lengths: left-padded in a batch


def generators(seeds):
    """One generator per row for a tuple of seeds; one for the whole batch for an int."""
    if isinstance(seeds, int):
        return torch.Generator().manual_seed(seeds)
    return [torch.Generator().manual_seed(s) for s in seeds]


def run(name, model, prompts, seeds, options=None, *, gen_length=G, **kwargs):
    """``run_sampler`` on ``prompts`` (token lists) with one generator per row, the case's facts and options."""
    entry, c = SAMPLERS.get(name), case(name)
    batch = SampleBatch.from_prompts(prompts, gen_length, mask_id=MASK, eos_id=EOS, pad_id=PAD)
    config = entry.make_config(with_options(c, **(options or {})), c.facts)
    return run_sampler(entry, model, batch, config, generators(seeds), **kwargs)


def model_for(name, seed=0, dtype=torch.float32):
    return case(name).build(seed).to(dtype)


def test_every_case_names_a_registered_sampler():
    stale = sorted(set(CASES) - set(NAMES))
    assert not stale, f"cases for samplers that are not registered: {stale}"


@pytest.mark.parametrize("name", NAMES)
def test_every_cached_sampler_declares_its_exact_cache(name):
    """A sampler with a ``cache`` option says in its case which cache settings give the uncached tokens."""
    if "cache" in user_fields(SAMPLERS.get(name).config):
        assert case(name).exact_caches, f"{name} has a cache option but its case lists no exact cache pair"


# --- (1) seeded determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_same_generators_same_tokens_and_other_seeds_other_tokens(name):
    model = model_for(name)
    prompts = [[5, 6, 7], [8, 9, 10]]
    first = run(name, model, prompts, (0, 100)).tokens
    again = run(name, model, prompts, (0, 100)).tokens
    assert torch.equal(first, again)
    others = [run(name, model, prompts, (s, 100 + s)).tokens for s in (1, 2, 3)]
    assert any(not torch.equal(first, other) for other in others), "the tokens do not depend on the seed"


# --- (2) batch invariance --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_left_padded_batch_gives_each_prompt_its_own_tokens(name):
    model = model_for(name)
    seeds = (3, 4, 5)
    both = run(name, model, PROMPTS, seeds).tokens
    width = max(map(len, PROMPTS))
    assert both.shape == (len(PROMPTS), width + G)
    for j, prompt in enumerate(PROMPTS):
        pad = width - len(prompt)
        assert torch.equal(both[j, :pad], torch.full((pad,), PAD)) and both[j, pad:width].tolist() == prompt
        alone = run(name, model, [prompt], (seeds[j],)).tokens
        assert torch.equal(alone[0], both[j, pad:]), f"row {j}: batched {both[j, pad:]} alone {alone[0]}"


# --- (3) EOS stopping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_stop_at_eos_trims_after_the_first_eos_and_keeps_what_came_before(name):
    """With EOS made likely, the stopped run is the full run with everything after a row's first generated EOS
    replaced by EOS."""
    seeds = (3, 4, 5)
    model = CountingModel(model_for(name), favour=(EOS, 0.25), offset=case(name).log_prob_offset)
    full = run(name, model, PROMPTS, seeds)
    stopped = run(name, model, PROMPTS, seeds, stop_at_eos=True)
    width = max(map(len, PROMPTS))
    trimmed = full.tokens.clone()
    end_at_eos(trimmed, width, EOS)
    assert not torch.equal(trimmed, full.tokens), "the test needs a full run with tokens after an EOS"
    assert torch.equal(stopped.tokens, trimmed), f"stopped:\n{stopped.tokens}\nfull:\n{full.tokens}"


@pytest.mark.parametrize("name", NAMES)
def test_a_model_that_ends_every_row_at_once_stops_the_sampler_early(name):
    """All the mass on EOS: a row has ended once its first generated position is committed (as EOS). Where that
    happens is random for samplers that reveal in a random order (ancestral, SEDD, Eso-LM): each run may stop no
    earlier than the full one, and over a few seeds the stopped runs make fewer model calls."""
    model = CountingModel(model_for(name), favour=(EOS, 1.0), offset=case(name).log_prob_offset)
    width = max(map(len, PROMPTS))
    full_nfe = stopped_nfe = 0
    for seed in range(4 if case(name).commits_early else 1):
        seeds = (3 + 10 * seed, 4 + 10 * seed, 5 + 10 * seed)
        full = run(name, model, PROMPTS, seeds, gen_length=12)
        model.calls = 0
        stopped = run(name, model, PROMPTS, seeds, gen_length=12, stop_at_eos=True)
        assert model.calls == stopped.nfe <= full.nfe
        trimmed = full.tokens.clone()
        end_at_eos(trimmed, width, EOS)
        assert torch.equal(stopped.tokens, trimmed)
        if case(name).commits_early:
            assert torch.all(stopped.tokens[:, width:] == EOS)
        else:  # nothing is committed before the last step: there is no earlier point at which a row has ended
            assert stopped.nfe == full.nfe
        full_nfe, stopped_nfe = full_nfe + full.nfe, stopped_nfe + stopped.nfe
    if case(name).commits_early:
        assert stopped_nfe < full_nfe


# --- (4) cached == uncached ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_an_exact_cache_gives_the_uncached_tokens(name):
    model = model_for(name)
    for cached, plain in case(name).exact_caches:
        a = run(name, model, PROMPTS, (3, 4, 5), cached).tokens
        b = run(name, model, PROMPTS, (3, 4, 5), plain).tokens
        assert torch.equal(a, b), f"{cached} vs {plain}:\n{a}\n{b}"


# --- (5) options that do not apply, shared validation ----------------------------------------------------------


def _one_line_error(name, options):
    c = case(name)
    with pytest.raises(DlmError) as err:
        SAMPLERS.get(name).make_config(with_options(c, **options), c.facts)
    assert "\n" not in str(err.value) and str(err.value)
    return str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_options_that_do_not_apply_are_rejected_in_one_line(name):
    fields = user_fields(SAMPLERS.get(name).config)
    message = _one_line_error(name, {"no_such_option": 1})
    assert "--no-such-option does not apply" in message
    if "threshold" not in fields:
        assert "--threshold does not apply" in _one_line_error(name, {"threshold": 0.9})
    for option, bad in (("temperature", -1.0), ("top_p", 0.0), ("steps", 0)):
        if option in fields:
            _one_line_error(name, {option: bad})


# --- (6) on_step -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_on_step_sees_every_step_and_committed_tokens_never_change(name):
    model = CountingModel(model_for(name))
    states = []

    def listen(state):
        states.append(
            (
                state.step,
                state.nfe,
                state.tokens.clone(),
                state.committed.clone(),
                None if state.masked is None else state.masked.clone(),
            )
        )

    out = run(name, model, [[5, 6, 7], [8, 9, 10]], 0, on_step=listen)  # one generator: the rows run as a batch
    assert [s[0] for s in states] == list(range(1, len(states) + 1)) and len(states) >= 2
    nfes = [s[1] for s in states]
    assert nfes == sorted(nfes) and nfes[-1] <= out.nfe
    for k, (_, _, tokens, committed, masked) in enumerate(states):
        assert committed[:, :3].all()  # the prompt
        if masked is not None:
            assert torch.equal(masked, tokens == MASK)
        for _, _, later, later_committed, _ in states[k + 1 :]:
            assert torch.equal(later[committed], tokens[committed]) and later_committed[committed].all()
        assert torch.equal(out.tokens[committed], tokens[committed])
    if case(name).masked:
        assert states[-1][3].all() and torch.equal(states[-1][2], out.tokens) and not (out.tokens == MASK).any()


@pytest.mark.parametrize("name", NAMES)
def test_on_step_returning_false_stops_the_sampler(name):
    model = CountingModel(model_for(name))
    full = run(name, model, [[5, 6, 7]], (0,))
    model.calls, seen = 0, []
    stopped = run(name, model, [[5, 6, 7]], (0,), on_step=lambda state: seen.append(state.step) or False)
    assert seen == [1] and stopped.nfe < full.nfe and model.calls == stopped.nfe


# --- (7) NFE ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_nfe_counts_the_model_calls(name):
    c = case(name)
    model = CountingModel(model_for(name))
    for options in [{}, *(o for pair in c.exact_caches for o in pair)]:
        for prompts in ([[5, 6, 7], [8, 9, 10]], PROMPTS):
            model.calls = 0
            out = run(name, model, prompts, range(len(prompts)), options)
            assert out.nfe == model.calls > 0, (options, prompts)
