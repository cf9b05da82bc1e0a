"""The contract suite runs many tiny models: one intra-op thread each (several threads only contend on calls this
small, and on a shared machine they slow the suite down by an order of magnitude). ``tests/conftest.py`` still
applies."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
