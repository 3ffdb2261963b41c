"""Loop-unrolled proximal-gradient networks: LU-DnCNN, LUSER-SW and LUSER-DW.

K stages from the initial estimate ``x0``::

    d_k     = x_k + step * B W (y - A x_k)     # data-consistency step
    x_{k+1} = d_k + prox_k(d_k)                # learned residual update

The data step is a module chosen once at construction (:mod:`luser_cli.models.data_steps`:
``B`` = the gradient's ``A^T / ||A||^2`` or CT's filtered back-projection, ``W`` the optional
per-ray count weights); ``step`` (the one learnable scalar, initialised to 1) and ``step_scale``
(the fixed buffer ``1 / ||A||^2``) are the model's, where checkpoints hold them.

Every prox is called the same way, ``prox(d)``. A feed-forward prox (DnCNN) returns the residual;
an equilibrium prox (:class:`~luser_cli.models.shallow_block.ShallowEquilibriumBlock`, which
owns its solver settings) returns ``(residual, info)``, torchdeq's ``(z, info)``: the solver
statistics of that stage as values (:func:`luser_cli.solvers.equilibrium.equilibrium`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from luser_cli.models.data_steps import (
    DATA_STEPS,
    DataConsistency,
    DataStep,
    GradientStep,
    count_weights,
)
from luser_cli.models.spectral_norm import power_iteration_
from luser_cli.operators.base import LinearOperator
from luser_cli.solvers.equilibrium import SolveInfo

__all__ = [
    "DATA_STEPS",
    "DataStep",
    "LoopUnrolled",
    "ReconstructionModel",
    "conv_layout",
    "count_weights",
]


def conv_layout(t: Tensor) -> Tensor:
    """Channels-last: oneDNN's CPU convolutions (and cuDNN's) run faster in it (a 64-channel 3x3
    convolution at 64 px about 1.7x on one AVX-512 core), and every later activation of the
    network inherits the layout of its input. Values are unchanged.

    A one-channel image (CT) is ambiguous: ``contiguous(memory_format=channels_last)`` keeps
    its NCHW strides, PyTorch then suggests NCHW and the whole network used to run in it; the
    view below gives it the channel stride 1 that makes oneDNN pick channels-last."""
    if t.dim() == 4 and t.shape[1] == 1:
        b, _, h, w = t.shape
        return t.reshape(b, h, w, 1).permute(0, 3, 1, 2)
    return t.contiguous(memory_format=torch.channels_last)


class ReconstructionModel(nn.Module):
    """Common interface: ``model(y, op, x0) -> x`` with per-stage solver records.

    Holds the learnable ``step``, the buffer ``step_scale`` and the data-consistency module
    ``data_consistency`` (no state of its own: the state dict is the same for every data step).
    """

    #: Registry name ("lu-dncnn", "deq4ip", "luser-sw", "luser-dw").
    name: str = ""
    #: Diagnostics: power iterations of the Jacobian spectral-radius estimate recorded per
    #: equilibrium in :attr:`records` (``jacobian_spectral_radius``); 0 = none (the default).
    jacobian_probe: int = 0
    #: Training: each equilibrium also returns the differentiable Jacobian regulariser in its
    #: record (``jacobian_frobenius``, see :func:`~luser_cli.solvers.equilibrium.equilibrium`).
    jacobian_penalty: bool = False

    def __init__(
        self, *, step_scale: float, data_consistency: DataConsistency | None = None
    ) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("step_scale", torch.tensor(float(step_scale)))
        self.data_consistency = data_consistency if data_consistency is not None else GradientStep()
        #: The solver statistics of the last forward, one ``info`` per equilibrium (with its
        #: ``stage``), as the solves returned them; an implicit backward adds its ``backward_*``
        #: statistics to the same dicts when it runs (:func:`~luser_cli.solvers.equilibrium`).
        self.records: list[SolveInfo] = []

    @property
    def data_step(self) -> str:
        """The data step's name (``model.data_step`` of the preset: gradient or fbp)."""
        return self.data_consistency.kind

    @property
    def ray_weight_power(self) -> float:
        """``p`` of the data step's ray weights (0: every ray alike)."""
        return self.data_consistency.ray_weight_power

    @property
    def mu_max(self) -> float | None:
        """The CT data's attenuation scale of the ray weights (None without weights)."""
        weights = self.data_consistency.weights
        return weights.mu_max if weights is not None else None

    def is_equilibrium(self) -> bool:
        return False


def _residual_and_info(out: Tensor | tuple[Tensor, SolveInfo]) -> tuple[Tensor, SolveInfo | None]:
    """A prox's output as ``(residual, info)``: an equilibrium prox returns both, a feed-forward
    one its residual only (``info`` None)."""
    return out if isinstance(out, tuple) else (out, None)


class LoopUnrolled(ReconstructionModel):
    """K unrolled stages with a DnCNN or shallow-equilibrium proximal network.

    ``prox`` holds one module (shared weights) or ``stages`` modules (different weights), each
    called as ``prox(d)``. Equilibrium proxes (those with their own ``equilibrium`` settings)
    are solved to a fixed point and trained by implicit differentiation; the others are
    feed-forward networks trained by backprop. With ``warm_start`` each equilibrium solve starts
    from the previous stage's fixed point instead of zero (``prox(d, z0=r)``): where the maps
    contract this changes only the iterations, not the fixed point.
    """

    def __init__(
        self,
        *,
        name: str,
        prox: Sequence[nn.Module],
        stages: int,
        step_scale: float,
        data_consistency: DataConsistency | None = None,
        warm_start: bool = False,
    ) -> None:
        super().__init__(step_scale=step_scale, data_consistency=data_consistency)
        if len(prox) not in (1, stages):
            raise ValueError(f"need 1 or {stages} proximal networks, got {len(prox)}")
        self.name = name
        self.stages = stages
        self.prox = nn.ModuleList(prox)
        self._equilibrium = any(hasattr(p, "equilibrium") for p in self.prox)
        self.warm_start = bool(warm_start) and self._equilibrium

    def is_equilibrium(self) -> bool:
        return self._equilibrium

    def shared_weights(self) -> bool:
        return len(self.prox) == 1

    def forward(
        self, y: Tensor, op: LinearOperator, x0: Tensor, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``y``: measurements ``(B, *op.measurement_shape())``; ``x0``: ``(B, C, H, W)``.

        Returns ``x_K`` (``(B, C, H, W)``), and the list ``[x_1, ..., x_K]`` when asked.
        """
        if self.training and self._equilibrium:
            power_iteration_(self.prox)
        for p in self.prox:  # the model-level diagnostics / penalty switches reach every block
            if hasattr(p, "equilibrium"):
                p.jacobian_probe, p.jacobian_penalty = self.jacobian_probe, self.jacobian_penalty
        records: list[SolveInfo] = []
        self.records = records
        data = self.data_consistency
        weights = data.ray_weights(y)
        x = x0
        outputs = []
        r: Tensor | None = None
        for k in range(self.stages):
            prox = self.prox[0 if self.shared_weights() else k]
            d = conv_layout(data(x, y, op, self.step, self.step_scale, weights))
            start = r if self.warm_start else None  # the block detaches it
            r, info = _residual_and_info(prox(d) if start is None else prox(d, z0=start))
            if info is not None:
                info["stage"] = k
                records.append(info)
            x = d + r
            outputs.append(x)
        return (x, outputs) if return_intermediates else x
