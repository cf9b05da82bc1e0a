"""docs/CONTRIBUTING.md's worked example, run as written: its sampler file and its registry line, then every
sampler contract of ``test_sampler_contracts`` on it (a new sampler is covered by the suite for free)."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import pytest

from dlm.samplers import SAMPLERS, Sampler

from . import test_sampler_contracts as contracts

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONTRIBUTING.md"
NAME = "left-to-right"
CONTRACTS = [
    f
    for n, f in inspect.getmembers(contracts, inspect.isfunction)
    if n.startswith("test_") and list(inspect.signature(f).parameters) == ["name"]
]


@pytest.fixture(scope="module")
def example():
    """Execute the page's first code block as the module ``dlm.samplers.left_to_right`` and its second (the
    registry line) against ``SAMPLERS``; unregister afterwards."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    module = types.ModuleType("dlm.samplers.left_to_right")
    sys.modules[module.__name__] = module
    exec(compile(blocks[0], "dlm/samplers/left_to_right.py", "exec"), module.__dict__)
    exec(
        compile(blocks[1], "dlm/samplers/__init__.py", "exec"),
        {"SAMPLERS": SAMPLERS, "Sampler": Sampler, **module.__dict__},
    )
    yield module
    SAMPLERS._items.pop(NAME, None)
    sys.modules.pop(module.__name__, None)


def test_the_example_registers_as_documented(example):
    entry = SAMPLERS.get(NAME)
    assert entry.generate is example.left_to_right_generate and entry.config is example.LeftToRightConfig


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda f: f.__name__)
def test_the_example_keeps_every_sampler_contract(example, contract):
    contract(NAME)


def test_there_are_contracts_to_keep():
    assert len(CONTRACTS) >= 8
