"""Per-sample statistics of a fixed-point solve, and the bookkeeping every solver shares.

All statistics are tensors of shape ``(B,)`` on the solver's device; nothing here synchronises
with the host except the explicit summaries (:meth:`SolverStats.summary` and friends), which
are meant for logging.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from luser_cli.solvers.config import SolverConfig

#: A non-converged sample whose ``||f(z)||`` grew by more than this factor over the solve (or
#: whose residual ended above its starting residual) is flagged ``diverged``.
DIVERGENCE_GROWTH = 1e4


@dataclass(frozen=True)
class SolverStats:
    """Outcome of one batched fixed-point solve, every field of shape ``(B,)``.

    - ``iterations`` (int64): the evaluation of ``f`` at which the sample first met ``tol``
      (1-based), or the number of evaluations performed if it never did.
    - ``residual`` (float): relative residual ``||f(z) - z|| / (||f(z)|| + eps)`` of the
      returned iterate ``z`` (``inf`` if no evaluation of it was finite).
    - ``converged`` (bool): ``residual <= tol``.
    - ``diverged`` (bool): not converged, and the last residual exceeded the first one or
      ``||f(z)||`` grew by more than :data:`DIVERGENCE_GROWTH`.
    - ``nonfinite`` (bool): ``f`` gave a NaN/Inf for this sample at some evaluation (or its
      norms overflowed); the sample was then frozen at its best finite iterate (the other
      samples are not affected).
    """

    iterations: Tensor
    residual: Tensor
    converged: Tensor
    diverged: Tensor
    nonfinite: Tensor

    def as_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """The fields as ``{prefix + name: tensor}`` (e.g. ``forward_iterations``)."""
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    def summary(self) -> dict[str, float]:
        """Batch summary for logging (synchronises): mean/max iterations, max residual, rates."""
        return summarize(self.as_dict())


def summarize(stats: Mapping[str, object] | Iterable[Mapping[str, object]]) -> dict[str, float]:
    """Summarise stats dictionaries (from :meth:`SolverStats.as_dict` or ``equilibrium``'s
    ``info``) over all samples and entries: for each prefix ``p`` (``""``, ``forward_``,
    ``backward_``) present, ``p + mean_iterations``, ``max_iterations``, ``max_residual``,
    ``converged_fraction``, ``diverged_fraction``, ``nonfinite_fraction``. Synchronises.
    """
    entries = [stats] if isinstance(stats, Mapping) else list(stats)
    merged: dict[str, list[Tensor]] = {}
    for entry in entries:
        for key, value in entry.items():
            if isinstance(value, Tensor):  # entries may carry extra keys (e.g. a stage number)
                merged.setdefault(key, []).append(value.detach().reshape(-1))
    out: dict[str, float] = {}
    prefixes = sorted({k.removesuffix("iterations") for k in merged if k.endswith("iterations")})
    for p in prefixes:
        cat = {
            name: torch.cat(merged[p + name]).double().cpu()
            for name in ("iterations", "residual", "converged", "diverged", "nonfinite")
            if p + name in merged
        }
        if not cat["iterations"].numel():
            continue
        out[p + "mean_iterations"] = float(cat["iterations"].mean())
        out[p + "max_iterations"] = float(cat["iterations"].max())
        if "residual" in cat:
            out[p + "max_residual"] = float(cat["residual"].max())
        for flag in ("converged", "diverged", "nonfinite"):
            if flag in cat:
                out[p + flag + "_fraction"] = float(cat[flag].mean())
    return out


class ProgressTracker:
    """Shared bookkeeping of the solvers: best iterate, per-sample stats, the stopping test.

    Works on flattened iterates ``(B, D)`` with tensor operations only (no host sync except in
    :meth:`poll`), so it also runs on fake tensors. Internal to :mod:`luser_cli.solvers`.
    """

    def __init__(self, z0: Tensor, cfg: SolverConfig) -> None:
        batch = z0.shape[0]
        rdtype = z0.dtype if z0.dtype.is_floating_point else torch.get_default_dtype()
        device = z0.device
        self.cfg = cfg
        self.best = z0.clone()  # (B, D) lowest-residual iterate so far, updated in place
        self.best_res = torch.full((batch,), math.inf, dtype=rdtype, device=device)
        self.met_at = torch.zeros(batch, dtype=torch.int64, device=device)  # 0 = not yet
        self.nonfinite = torch.zeros(batch, dtype=torch.bool, device=device)
        self.done = self.nonfinite
        self.first_res: Tensor | None = None
        self.first_fnorm: Tensor | None = None
        self.last_res = self.best_res
        self.last_fnorm = self.best_res
        self.evaluations = 0

    def update(self, x: Tensor, fnorm: Tensor, gnorm: Tensor) -> None:
        """Record evaluation number ``self.evaluations + 1`` of ``f`` at ``x`` ``(B, D)``.

        ``fnorm = ||f(x)||`` and ``gnorm = ||f(x) - x||`` are ``(B,)``. Afterwards
        ``self.nonfinite`` ``(B,)`` marks the samples whose ``f`` went non-finite: the solver
        must feed them ``self.best`` from now on (they are frozen).
        """
        self.evaluations += 1
        res = (gnorm / (fnorm + self.cfg.eps)).to(self.best_res.dtype)
        fnorm = fnorm.to(self.best_res.dtype)
        # An overflowed norm (inf / inf = NaN, finite / inf = 0) is no measurement at all.
        finite = torch.isfinite(fnorm) & torch.isfinite(res)
        res = torch.where(finite, res, torch.nan)
        self.nonfinite = self.nonfinite | ~finite
        improved = res < self.best_res  # False for NaN
        torch.where(improved.unsqueeze(1), x, self.best, out=self.best)
        self.best_res = torch.where(improved, res, self.best_res)
        newly_met = (self.met_at == 0) & (res <= self.cfg.tol)
        self.met_at = torch.where(newly_met, self.evaluations, self.met_at)
        self.done = (self.met_at > 0) | self.nonfinite
        if self.first_res is None:
            self.first_res, self.first_fnorm = res, fnorm
        self.last_res, self.last_fnorm = res, fnorm

    def poll(self) -> tuple[bool, bool]:
        """The stopping test: ``(stop, any_frozen)``.

        Every ``check_every`` evaluations this is the solve's one host synchronisation (both
        flags in one transfer); otherwise, and always with ``fixed_iterations``, it returns
        ``(False, True)`` without looking (frozen samples must then be handled blindly).
        """
        cfg = self.cfg
        if cfg.fixed_iterations or self.evaluations % cfg.check_every:
            return False, True
        stop, frozen = torch.stack((self.done.all(), self.nonfinite.any())).tolist()
        return bool(stop), bool(frozen)

    def stats(self) -> SolverStats:
        """Per-sample statistics of the solve so far (see :class:`SolverStats`)."""
        converged = self.best_res <= self.cfg.tol
        iterations = torch.where(self.met_at > 0, self.met_at, self.evaluations)
        assert self.first_res is not None and self.first_fnorm is not None
        grew = self.last_fnorm > DIVERGENCE_GROWTH * (self.first_fnorm + self.cfg.eps)
        diverged = ~converged & ((self.last_res > self.first_res) | grew)
        return SolverStats(
            iterations=iterations,
            residual=self.best_res,
            converged=converged,
            diverged=diverged,
            nonfinite=self.nonfinite,
        )
