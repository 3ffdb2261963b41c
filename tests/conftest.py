"""Shared test fixtures. Tests run on CPU, in float64 where exactness is checked."""

from __future__ import annotations

import os

import pytest
import torch

# Two CI cores run two xdist workers; keep each to one intra-op thread so they do not fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
