"""Per-step facts of a bench cell's training run, read from its ``metrics.jsonl``
(:func:`training_stats`), and the JSON-safe numbers the bench records (:func:`finite`,
:func:`mean_finite`: None for NaN / inf / missing)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from luser_cli.training.convergence import backward_convergence
from luser_cli.training.metrics_file import read_rows, row_kind

__all__ = ["finite", "mean_finite", "training_stats"]


def finite(v: Any) -> float | None:
    """JSON-safe float (None for NaN / inf / missing)."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def mean_finite(values: Sequence[float | None]) -> float | None:
    """Mean of the finite values (None if there is none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def training_stats(metrics_path: Path) -> dict[str, Any]:
    """Per-step facts from a run's ``metrics.jsonl``: time per step (the first step, which
    pays for allocations and lazy initialisation, excluded), solver iterations, operator
    calls, losses, rollback events."""
    rows = read_rows(metrics_path)
    steps = [r for r in rows if row_kind(r) == "step" and "time_s" in r]
    timed = [r["time_s"] for r in steps if r.get("step", 0) > 1] or [r["time_s"] for r in steps]
    tail = steps[-max(1, len(steps) // 10) :] if steps else []
    val = [r for r in rows if row_kind(r) == "val"]
    out: dict[str, Any] = {
        "steps_logged": len(steps),
        "time_per_step_s": mean_finite(timed),
        "time_per_step_std_s": float(np.std(timed)) if timed else None,
        "time_first_step_s": steps[0]["time_s"] if steps else None,
        "loss_first": finite(steps[0]["loss"]) if steps else None,
        "loss_last10pct": mean_finite([r["loss"] for r in tail]),
        "train_psnr_last10pct": mean_finite([r["psnr"] for r in tail]),
        "A_calls_per_step": mean_finite([r.get("A_calls") for r in steps]),
        "At_calls_per_step": mean_finite([r.get("At_calls") for r in steps]),
        "rollback_events": sum(1 for r in rows if r.get("event") == "rollback"),
        "val_psnr": finite(val[-1]["val_psnr"]) if val else None,
        "val_ssim": finite(val[-1]["val_ssim"]) if val else None,
    }
    for key in ("fp_forward_iters", "fp_backward_iters"):
        if any(key in r for r in steps):
            out[f"{key}_mean"] = mean_finite([r.get(key) for r in steps])
            out[f"{key}_last10pct"] = mean_finite([r.get(key) for r in tail])
    if any("fp_forward_residual_max" in r for r in steps):
        out["fp_forward_residual_max"] = finite(
            max(r.get("fp_forward_residual_max", 0.0) for r in steps)
        )
    bwd = backward_convergence(steps)
    if bwd is not None:  # share of steps whose implicit backward solves all converged
        out["bwd_converged_step_fraction"] = bwd["converged_step_fraction"]
        out["bwd_converged_solve_fraction"] = bwd["converged_solve_fraction"]
    return out
