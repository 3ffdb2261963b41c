"""Can the gradients of a run be trusted: how often its implicit backward solve converged.

An equilibrium model's implicit gradient is the gradient of the loss only when the backward
fixed point ``g = J^T g + grad`` was solved; when the solve hits its iteration cap the update is
an approximation of unknown quality (measured on DEQ4IP: 82-95 % off). Every training step
records ``fp_backward_converged`` in ``metrics.jsonl``: the fraction of its backward solves
(images x equilibria) that met ``solver.backward.tol``; a step *converged* when all of them did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from luser_cli.training.metrics_file import read_rows, row_kind

#: Below this fraction of converged steps, train / eval / bench print a one-line warning.
WARN_BELOW = 0.5

#: The per-step metric (fraction of backward solves that converged).
STEP_KEY = "fp_backward_converged"


def step_backward_converged(records: Iterable[Mapping[str, Any]]) -> float | None:
    """Fraction of the backward solves of one step (all images, all equilibria) that converged;
    None when nothing was solved backward (no equilibrium, or Jacobian-free backward)."""
    flags = [r["backward_converged"].reshape(-1) for r in records if "backward_converged" in r]
    if not flags:
        return None
    return float(torch.cat(flags).double().mean())


def backward_convergence(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Summary over the training steps of ``rows`` (``metrics.jsonl`` rows) that recorded
    :data:`STEP_KEY`: ``steps``, ``converged_steps``, ``converged_step_fraction`` (steps whose
    every backward solve converged) and ``converged_solve_fraction`` (mean over steps of the
    fraction of solves). None when no step recorded it (LU-DnCNN, JFB, runs from before it
    was recorded)."""
    fractions = [
        float(r[STEP_KEY])
        for r in rows
        if r.get(STEP_KEY) is not None and row_kind(dict(r)) == "step"
    ]
    if not fractions:
        return None
    ok = sum(1 for f in fractions if f >= 1.0)
    return {
        "steps": len(fractions),
        "converged_steps": ok,
        "converged_step_fraction": ok / len(fractions),
        "converged_solve_fraction": sum(fractions) / len(fractions),
    }


def run_backward_convergence(run: Path) -> dict[str, Any] | None:
    """:func:`backward_convergence` of a run folder (or of the folder of a checkpoint file)."""
    folder = run if run.is_dir() else run.parent
    return backward_convergence(read_rows(folder / "metrics.jsonl"))


def convergence_warning(summary: Mapping[str, Any] | None, what: str = "training") -> str | None:
    """The one-line warning when most steps' backward solves did not converge, else None."""
    if not summary or summary["converged_step_fraction"] >= WARN_BELOW:
        return None
    return (
        f"warning: the implicit backward solve converged on only "
        f"{summary['converged_step_fraction']:.0%} of {what} steps "
        f"({summary['converged_steps']}/{summary['steps']}): those gradients were approximate, "
        "not the exact implicit gradient (raise --bwd-max-iter / --bwd-tol, or use a more "
        "contractive model)"
    )


def solver_summary(records: list[dict], tol: float | None = None) -> dict[str, float]:
    """Mean forward/backward iterations and the worst residuals over stages and samples."""
    out: dict[str, float] = {}
    for key in ("forward", "backward"):
        its = [r[f"{key}_iterations"].float() for r in records if f"{key}_iterations" in r]
        res = [r[f"{key}_residual"].float() for r in records if f"{key}_residual" in r]
        if its:
            out[f"fp_{key}_iters"] = float(torch.stack([i.mean() for i in its]).mean())
            out[f"fp_{key}_iters_total"] = float(sum(float(i.mean()) for i in its))
        if res:
            worst = float(torch.stack([r.max() for r in res]).max())
            if any(bool(r[f"{key}_nonfinite"].any()) for r in records if f"{key}_nonfinite" in r):
                worst = math.inf  # a sample's iterates stopped being finite: exploded
            out[f"fp_{key}_residual_max"] = worst
    if tol is not None:
        res = [r["forward_residual"] for r in records if "forward_residual" in r]
        if res:
            out["fp_nonconverged"] = float(sum(int((r > tol).sum()) for r in res))
    frob = [
        r["jacobian_frobenius"].detach().float().mean()
        for r in records
        if "jacobian_frobenius" in r
    ]
    if frob:
        out["fp_jacobian_frobenius"] = float(torch.stack(frob).mean())  # the penalty's value
    bwd_ok = step_backward_converged(records)
    if bwd_ok is not None:
        out[STEP_KEY] = bwd_ok  # fraction of this step's backward solves that converged
    return out
