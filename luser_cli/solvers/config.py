"""Typed settings of the fixed-point solvers and of the equilibrium (DEQ) layer.

One :class:`SolverConfig` drives any solver (``solver(f, z0, cfg) -> (z, stats)``); an
:class:`EquilibriumConfig` holds one for the forward solve (``z = f(z)``) and one for the
backward solve (``g = J^T g + grad``), in the style of torchdeq's ``f_*`` / ``b_*`` settings.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

SolverName = Literal["anderson", "picard"]
GraphMode = Literal["recompute", "keep"]
#: The values of :attr:`EquilibriumConfig.graph`.
FP_GRAPHS: tuple[str, ...] = get_args(GraphMode)


class _Strict(BaseModel):
    # Strict types and finite numbers: a preset's ``max_iter = "30"`` or ``tol = nan`` is refused.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SolverConfig(_Strict):
    """Settings of one fixed-point solve.

    ``max_iter`` counts evaluations of ``f``; the solve stops earlier once every sample's
    relative residual ``||f(z) - z|| / (||f(z)|| + eps)`` is at most ``tol`` (tested every
    ``check_every`` evaluations, the only host synchronisation), unless ``fixed_iterations``.
    """

    method: SolverName = "anderson"
    max_iter: int = Field(30, ge=1, description="most evaluations of the map (bounds the solve)")
    tol: float = Field(1e-3, ge=0, description="relative residual at which a sample has converged")
    history: int = Field(5, ge=1, le=64, description="Anderson memory m (past iterates mixed)")
    regularization: float = Field(
        1e-4,
        ge=0,
        description="Tikhonov lambda on the Anderson Gram system, relative to its mean diagonal",
    )
    regularization_scale: Literal["mean", "latest"] | None = Field(
        None,
        description="what the Anderson Tikhonov lambda is relative to: mean = the mean diagonal "
        "of the Gram matrix (unset: the original), dominated by the oldest, largest residual, "
        "so near a tight tolerance it over-regularises and a fast contraction takes more "
        "iterations than Picard; latest = the newest residual's squared norm",
    )
    damping: float = Field(1.0, gt=0, le=1, description="Anderson / Picard mixing beta (1 = none)")
    fixed_iterations: bool = Field(
        False,
        description=(
            "run exactly max_iter evaluations with no data-dependent stopping and no host sync "
            "(for fake-tensor memory simulation and CUDA graphs)"
        ),
    )
    check_every: int = Field(1, ge=1, description="evaluations between two stopping tests")
    eps: float = Field(1e-5, gt=0, description="added to ||f(z)|| in the relative residual")


class EquilibriumConfig(_Strict):
    """Forward and backward solver settings of :func:`luser_cli.solvers.equilibrium`.

    ``backward_mode="implicit"`` solves ``g = J^T g + grad``: the implicit gradient, equal to
    the gradient up to ``backward.tol`` only where that solve converged (``backward_converged``
    in the records; a solve that hits ``backward.max_iter`` gives an approximation of unknown
    quality, which training counts and reports); ``"jfb"`` is Jacobian-free backprop (Fung et
    al. 2022), ``g = grad``: an approximation of the gradient that skips the backward solve.

    ``graph`` says what the layer holds between forward and backward. ``"recompute"`` (ours,
    the default) saves only ``z*`` and the inputs and recomputes the injection and one block
    application in backward: the least memory. ``"keep"`` builds that application's graph in
    the forward and keeps it until backward, as torchdeq and the DEQ code the paper builds on
    do: no recomputation (a slightly faster backward) for several activation maps per layer.
    Gradients are identical.
    """

    forward: SolverConfig = Field(SolverConfig(), description="forward fixed-point solve z = f(z)")
    backward: SolverConfig = Field(
        SolverConfig(), description="backward fixed-point solve g = J^T g + grad (implicit)"
    )
    backward_mode: Literal["implicit", "jfb"] = Field(
        "implicit",
        description="implicit = the implicit-function gradient, exact only where the backward "
        "solve converges ('bwd ok' in the progress bar); jfb = Jacobian-free backprop, an "
        "approximation that skips the backward solve",
    )
    graph: GraphMode = Field(
        "recompute",
        description="what equilibrium layers keep for backward: recompute = only z* and the "
        "inputs, one block application recomputed (least memory); keep = the graph of that "
        "application, as torchdeq and the paper's code",
    )

    def with_fixed_iterations(self, fixed: bool = True) -> EquilibriumConfig:
        """A copy whose forward and backward solves run exactly ``max_iter`` evaluations.

        This is what a fake-tensor memory simulation needs (no data-dependent control flow).
        """
        return self.model_copy(
            update={
                "forward": self.forward.model_copy(update={"fixed_iterations": fixed}),
                "backward": self.backward.model_copy(update={"fixed_iterations": fixed}),
            }
        )
