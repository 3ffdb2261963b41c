"""The learning-rate schedule: warm-up, then none / cosine / wsd (warm-up, stable, decay)."""

from __future__ import annotations

import math

import pytest

from luser_cli.training.config import TrainSettings
from luser_cli.training.schedule import learning_rate


def lrs(total: int = 10, **kw) -> list[float]:
    t = TrainSettings(lr=1e-3, **{"warmup_steps": 0, **kw})
    return [learning_rate(t, s, total) for s in range(total)]


def test_warm_up_ramps_linearly_then_none_is_constant() -> None:
    assert lrs(scheduler="none", warmup_steps=4) == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4] + [1e-3] * 7
    )


def test_cosine_falls_from_the_full_rate_towards_zero() -> None:
    want = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)]
    assert lrs(scheduler="cosine") == pytest.approx(want)


def test_wsd_holds_the_full_rate_then_decays_linearly_to_zero() -> None:
    got = lrs(scheduler="wsd", decay_fraction=0.3)  # decay over steps 7, 8, 9 of 10
    assert got[:7] == pytest.approx([1e-3] * 7)
    assert got[7:] == pytest.approx([1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    # Warm-up and decay multiply; a one-step run just takes the (warmed-up) rate.
    warm = lrs(scheduler="wsd", warmup_steps=2, decay_fraction=0.5)
    assert warm[0] == pytest.approx(5e-4) and warm[-1] == pytest.approx(2e-4)
    assert learning_rate(
        TrainSettings(lr=1e-3, scheduler="wsd", warmup_steps=0), 0, 1
    ) == pytest.approx(1e-3)


def test_decay_fraction_must_be_in_0_1() -> None:
    with pytest.raises(ValueError, match="decay_fraction"):
        TrainSettings(decay_fraction=0.0)
