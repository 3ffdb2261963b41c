"""Shared test fixtures. Tests run on CPU, in float64 where exactness is checked."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

# Two CI cores run two xdist workers; keep each to one intra-op thread so they do not fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of small-tensor tests (faster, and deterministic
    timing-independent results on a busy 2-core machine); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
