"""Plain (optionally damped) fixed-point iteration ``z <- z + beta (f(z) - z)``.

Same signature and semantics as :func:`luser_cli.solvers.anderson.anderson` (best iterate per
sample, per-sample stats, ``fixed_iterations``); the reference that Anderson must beat.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from luser_cli.solvers.config import SolverConfig
from luser_cli.solvers.stats import ProgressTracker, SolverStats


@torch.no_grad()
def picard(
    f: Callable[[Tensor], Tensor], z0: Tensor, cfg: SolverConfig
) -> tuple[Tensor, SolverStats]:
    """Solve ``z = f(z)`` for every sample of a batch by fixed-point iteration.

    Args:
        f: maps ``(B, ...)`` to the same shape. Runs under ``torch.no_grad()``.
        z0: ``(B, ...)`` initial iterate.
        cfg: ``damping`` (beta), ``max_iter``, ``tol``, ``check_every``, ``fixed_iterations``
            (``history`` and ``regularization`` are ignored).

    Returns:
        ``(z, stats)``: each sample's lowest-residual evaluated iterate ``(B, ...)`` and its
        per-sample :class:`SolverStats`. A sample for which ``f`` gives NaN/Inf is frozen at
        its best finite iterate and flagged ``nonfinite``.
    """
    shape = z0.shape
    batch = shape[0]
    x = z0.detach().reshape(batch, -1)
    beta = cfg.damping
    g_buf = torch.empty_like(x)
    tracker = ProgressTracker(x, cfg)
    for k in range(cfg.max_iter):
        fx = f(x.view(shape)).reshape(batch, -1)
        torch.sub(fx, x, out=g_buf)
        tracker.update(
            x, torch.linalg.vector_norm(fx, dim=1), torch.linalg.vector_norm(g_buf, dim=1)
        )
        if k + 1 == cfg.max_iter:
            break
        stop, any_frozen = tracker.poll()
        if stop:
            break
        x = fx if beta == 1.0 else x.add(g_buf, alpha=beta)
        if any_frozen:
            x = torch.where(tracker.nonfinite.unsqueeze(1), tracker.best, x)
    return tracker.best.view(shape), tracker.stats()
