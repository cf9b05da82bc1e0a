"""The objective contract suite: every entry of ``dlm.objectives.OBJECTIVES`` keeps the same promises (a new entry
is covered for free; ``objective_cases.py`` gives its options and its exact models of the toy).

(a) with the exact model of the toy, ``nll`` is -log p(x0) (AR: exactly; the bounds: within ``stats.assert_tight``'s
Monte Carlo tolerance); (b) for a wrong model it is above the entropy; (c) ``loss`` and ``nll`` are seeded; (d)
``loss`` is a finite scalar whose gradient reaches the model, its metrics detached 0-d tensors; (e) ``Config`` and
the run config's objective section reject an unknown option and out-of-range values in one ``DlmError`` line;
(f) ``OBJECTIVES.build`` makes the class with the run config's options."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dlm.config import RunConfig, apply_overrides
from dlm.errors import DlmError
from dlm.models.transformer import Transformer
from dlm.objectives import OBJECTIVES, LossOutput, Objective
from dlm.presets import preset_config

from .objective_cases import CASES, EXEMPT, case
from .stats import assert_tight

NAMES = OBJECTIVES.names()
TOY_CASES = [(name, toy) for name in NAMES for toy in case(name).toys]
TOY_IDS = [f"{n}-{t.label}" for n, t in TOY_CASES]
RUNS = [(name, options) for name in NAMES for options in case(name).options]
RUN_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'defaults'}" for n, o in RUNS]


class Tok:
    mask_id, eos_id = 18, 19


def run_config(name: str, **options) -> RunConfig:
    """The tiny preset shrunk to 8-token sequences over 20 ids, with objective ``name`` and ``options``."""
    cfg = preset_config("tiny")
    cfg.train.objective, cfg.train.schedule = name, OBJECTIVES.get(name).default_schedule
    cfg.data.seq_len, cfg.model.vocab_size = 8, 20
    cfg.model.d_model, cfg.model.n_layers, cfg.model.d_ff, cfg.model.max_seq_len = 32, 1, 64, 8
    cfg.objective.update(options)
    return cfg


def setup(name, options):
    """(objective, a Transformer that fits it, x0 [4, 8]) from the run config with ``options``."""
    cls = OBJECTIVES.get(name)
    cfg = run_config(name, **options).validate()
    cls.configure(cfg)
    cfg.model.causal = cls.causal
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    x0 = torch.randint(0, 18, (4, 8), generator=torch.Generator().manual_seed(1))
    return OBJECTIVES.build(cfg, Tok()), model, x0


def toy_objective(name, toy_case):
    toy, exact, wrong, kwargs = toy_case.make()
    objective = OBJECTIVES.get(name)(mask_id=toy.mask_id, eos_id=toy.eos_id, **kwargs)
    return toy, exact, wrong, objective


def one_draw_each(objective, model, toy, draws, seed=0):
    """``draws`` one-draw estimates of every toy sequence, [draws, S] (one row of a repeated batch each: the times
    are stratified across all of them)."""
    x0 = toy.seqs.repeat(draws, 1)
    with torch.no_grad():
        nll = objective.nll(model, x0, 1, torch.Generator().manual_seed(seed))
    assert nll.shape == (len(x0),)
    return nll.double().view(draws, -1)


def test_every_case_names_a_registered_objective_and_only_the_listed_objectives_have_no_toy():
    stale = sorted((set(CASES) | set(EXEMPT)) - set(NAMES))
    assert not stale, f"cases for objectives that are not registered: {stale}"
    without = {name for name in NAMES if not case(name).toys}
    assert without == set(EXEMPT), (
        f"objectives without an exact model of the toy: {sorted(without)}; exempt: "
        f"{sorted(EXEMPT)} (give the new objective a toy case or exempt it with a reason)"
    )
    assert not any(case(name).toys for name in EXEMPT)


@pytest.mark.parametrize("name", NAMES)
def test_the_class_declares_the_objective_contract(name):
    cls = OBJECTIVES.get(name)
    assert issubclass(cls, Objective) and cls.name == name and isinstance(cls.causal, bool)
    assert isinstance(cls.is_bound, bool) and cls.samplers and isinstance(cls.samplers, tuple)
    assert dataclasses.is_dataclass(cls.Config) and cls.Config.__dataclass_params__.frozen


# --- (a) tight with the exact model, (b) a bound for a wrong one ------------------------------------------------


@pytest.mark.parametrize("name,toy_case", TOY_CASES, ids=TOY_IDS)
def test_nll_of_the_exact_model_is_the_toys_nll(name, toy_case):
    toy, exact, _, objective = toy_objective(name, toy_case)
    truth = toy.nll(toy.seqs)
    draws = one_draw_each(objective, exact, toy, toy_case.draws)
    if objective.is_bound:
        assert_tight(draws, truth)
    else:  # the exact NLL: no Monte Carlo error
        torch.testing.assert_close(draws[0], truth, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,toy_case", TOY_CASES, ids=TOY_IDS)
def test_nll_of_a_wrong_model_is_above_the_entropy(name, toy_case):
    """E_x0[nll] for a wrong model is its cross-entropy (AR) or above it (a bound): above the toy's entropy."""
    toy, _, wrong, objective = toy_objective(name, toy_case)
    nll = one_draw_each(objective, wrong, toy, toy_case.draws).mean(0)
    entropy = (toy.p * toy.nll(toy.seqs)).sum()
    assert (toy.p * nll).sum() > entropy + toy_case.margin


# --- (c) seeded determinism, (d) the loss -----------------------------------------------------------------------


@pytest.mark.parametrize("name,options", RUNS, ids=RUN_IDS)
def test_loss_and_nll_are_seeded(name, options):
    """The same generator seed gives the same value bit for bit; other seeds other values, except for the exact
    NLL (AR: no draws, the same value whatever the seed)."""
    objective, model, x0 = setup(name, options)

    def loss(seed):
        with torch.no_grad():
            return objective.loss(model, x0, torch.Generator().manual_seed(seed)).loss

    def nll(seed):
        with torch.no_grad():
            return objective.nll(model, x0, 2, torch.Generator().manual_seed(seed))

    for f in (loss, nll):
        first = f(2)
        assert torch.equal(first, f(2)), f.__name__  # every draw comes from the generator
        others = [f(s) for s in (3, 4)]
        if objective.is_bound:
            assert all(not torch.equal(first, other) for other in others), f"{f.__name__} ignores the seed"
        else:
            assert all(torch.equal(first, other) for other in others)
    bound = nll(3)
    assert bound.shape == (4,) and torch.isfinite(bound).all() and (bound > 0).all()


@pytest.mark.parametrize("name,options", RUNS, ids=RUN_IDS)
def test_loss_is_a_finite_scalar_with_gradients_and_detached_tensor_metrics(name, options):
    objective, model, x0 = setup(name, options)
    out = objective.loss(model, x0, torch.Generator().manual_seed(2))
    assert isinstance(out, LossOutput) and out.loss.shape == () and torch.isfinite(out.loss) and out.loss.requires_grad
    # the lean training step sums and logs metrics as tensors: no floats, nothing attached to the graph
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and not value.requires_grad and value.shape == (), key
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    # through the whole network to its input (adaLN's zero-initialised gates may hold other gradients at 0)
    assert model.embedding_weight.grad is not None and model.embedding_weight.grad.abs().sum() > 0


# --- (e) options, (f) build -------------------------------------------------------------------------------------


def _one_line(err) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_option_and_out_of_range_values_are_one_line_errors(name):
    cls, bad = OBJECTIVES.get(name), case(name).bad
    fields = [f.name for f in dataclasses.fields(cls.Config)]
    with pytest.raises(DlmError) as err:
        apply_overrides(run_config(name), ["objective.no_such_option=1"])
    assert _one_line(err).startswith(
        f"objective.no_such_option is not an option of the {name} objective; its options: {', '.join(fields) or 'none'}"
    )
    with pytest.raises(DlmError) as err:
        RunConfig.from_dict({**run_config(name).to_dict(), "objective": {"no_such_option": 1}})
    assert "objective.no_such_option is not an option" in _one_line(err)
    assert sorted(bad) == sorted(fields), "give every option of the Config an out-of-range value in the case"
    for key, (value, message) in bad.items():
        with pytest.raises(DlmError) as err:
            cls.Config(**{key: value})
        assert message in _one_line(err), (key, str(err.value))
        with pytest.raises(DlmError) as err:
            run_config(name, **{key: value}).validate()
        assert message in _one_line(err), (key, str(err.value))


@pytest.mark.parametrize("name,options", RUNS, ids=RUN_IDS)
def test_build_makes_the_class_with_the_run_configs_options(name, options):
    cls = OBJECTIVES.get(name)
    cfg = run_config(name, **options).validate()
    objective = OBJECTIVES.build(cfg, Tok())
    assert type(objective) is cls and objective.config == cfg.objective_config() == cls.Config(**options)
    assert (objective.mask_id, objective.eos_id, objective.vocab_size) == (18, 19, 20)
    assert objective.schedule == cfg.train.schedule and objective.antithetic == cfg.train.antithetic
