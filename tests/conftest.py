"""Shared fixtures."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: the tiny test models are fastest that way on 2 cores."""
    from snnprune import estimators

    estimators.warmup(announce=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
