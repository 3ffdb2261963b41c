"""The learning-rate schedule of ``luser train``: a pure function of the step."""

from __future__ import annotations

import math

from luser_cli.training.config import TrainSettings


def learning_rate(t: TrainSettings, step: int, total: int, scale: float = 1.0) -> float:
    """Learning rate of (0-based) ``step`` of ``total``: ``t.lr * scale``, ramped up linearly
    over ``t.warmup_steps``, then shaped by ``t.scheduler``.

    * ``none``: constant;
    * ``cosine``: ``0.5 (1 + cos(pi step / total))``, from the full rate to 0 over the run;
    * ``wsd`` (warm-up, stable, decay): the full rate until the last ``t.decay_fraction`` of the
      run, then a linear fall to 0. It holds the full rate longer than a cosine (measured in
      ``examples/quality-bars.md``).
    """
    base = t.lr * scale
    if t.warmup_steps:
        # Adam's first steps are sign steps of size lr on every weight; the spectrally
        # normalised convolutions feeding per-channel GroupNorm are scale-invariant, so such a
        # step changes their output by as much as the output itself (a single such step wrecks
        # a LUSER-DW; examples/quality-bars.md). Ramp up instead.
        base *= min(1.0, (step + 1) / t.warmup_steps)
    if total <= 1:
        return base
    if t.scheduler == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    if t.scheduler == "wsd":
        decay_start = (1.0 - t.decay_fraction) * total
        if step >= decay_start:
            return base * max(0.0, (total - step) / (total - decay_start))
    return base
