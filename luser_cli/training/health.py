"""Is a training step healthy: the checks that decide a rollback (see :mod:`.loop`)."""

from __future__ import annotations

import math

import torch
from torch import nn

#: A forward fixed-point residual above this marks the fixed point as exploded.
EXPLODED_RESIDUAL = 1e3


def step_failure(loss: float, grad_norm: float, forward_residual: float) -> str | None:
    """Why a step must not be applied (non-finite loss or gradient, exploding fixed point),
    or None when it is healthy. Inputs are the step's values reduced over all ranks (max)."""
    if not math.isfinite(loss):
        return "non-finite loss"
    if not math.isfinite(grad_norm):
        return "non-finite gradient"
    if not math.isfinite(forward_residual) or forward_residual > EXPLODED_RESIDUAL:
        return f"exploding fixed point (forward residual {forward_residual:.3g})"
    return None


def weights_finite(model: nn.Module) -> bool:
    """True when every parameter of ``model`` is finite."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True
