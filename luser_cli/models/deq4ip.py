"""DEQ4IP (Gilton, Ongie & Willett 2021): the whole proximal-gradient step as one equilibrium.

The fixed point ``x* = T(x*)`` of ``T(x) = d(x) + DnCNN(d(x))`` with
``d(x) = x + lam * A^T (y - A x)`` is found by Anderson acceleration from ``x0`` and trained by
implicit differentiation. Every iteration applies ``A`` and ``A^T`` once, which is the cost the
LUSER paper contrasts with its fixed K = 8 gradient steps.

BatchNorm inside a fixed-point map, ``norm="batch"`` (the original form, and that of checkpoints
from before ``model.deq4ip_norm`` existed): during the solve and its backward the running
statistics are frozen (every application must be the same function) but the layers normalise by
the batch's statistics; they are updated once per training step, from the final iterate.

Measured (CT 32 px, ``ct-paper``, at initialisation): with batch statistics the prox residual's
Jacobian has spectral radius 1.3 and the whole map 2.2-2.3 (batch normalisation rescales every
layer's signal to unit variance, undoing the spectral normalisation), so neither solve converges
in training, and relaxation ``z + a (f(z) - z)`` does not help (1.6 at a = 0.5, 1.2 at 0.2: the
dominant eigenvalue is real and above 1). ``norm="fixed"`` keeps the BatchNorm layers (same
parameters) as fixed per-channel affine maps ``gamma x + beta``: running statistics stay at
mean 0, variance 1 and are never updated, so the map does not depend on the batch and its
Lipschitz constant is bounded by the convolutions' and gains' norms.

``anchor`` ``mu`` adds a Tikhonov term to the data step,
``d = x + lam (B W (y - A x) - mu (x - x0))`` (a gradient step on
``1/2 ||A x - y||^2 / ||A||^2 + mu/2 ||x - x0||^2`` for the gradient data step), with the
learned step ``lam`` clamped to ``[0, 2 / (1 + mu)]`` so the data step stays non-expansive:
it contracts by ``1 - lam mu`` on the null space of ``A``, where the plain step is the
identity and the map's spectral radius sits at 0.99-0.9999. With the fixed BatchNorm alone the
map's spectral radius is 0.99 (the data step's) and the backward solve stops just short of its
1e-3 tolerance in 30 iterations; ``mu = 0.01`` gives the margin
(``examples/deq4ip-convergence.md``); ``mu = 0.1`` converges in 9 iterations but pulls the
fixed point towards ``x0`` and cost 4 dB. New runs get ``norm="fixed"`` and ``mu = 0.01``
(``Preset.for_model``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from luser_cli.models.data_steps import DataConsistency
from luser_cli.models.dncnn import DnCNN
from luser_cli.models.spectral_norm import power_iteration_
from luser_cli.models.unrolled import ReconstructionModel, conv_layout
from luser_cli.operators.base import LinearOperator
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.solvers.equilibrium import equilibrium


@contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Inside the block BatchNorm layers normalise by batch statistics (in training mode) but
    do not update their running averages."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, m in zip(bns, saved, strict=True):
            bn.momentum = m


class DEQ4IP(ReconstructionModel):
    name = "deq4ip"

    def __init__(
        self,
        *,
        channels: int,
        step_scale: float,
        equilibrium: EquilibriumConfig,
        data_consistency: DataConsistency | None = None,
        norm: str = "batch",
        anchor: float = 0.0,
    ) -> None:
        super().__init__(step_scale=step_scale, data_consistency=data_consistency)
        if norm not in ("batch", "fixed"):
            raise ValueError(f"norm must be batch or fixed, got {norm!r}")
        if not 0.0 <= anchor < 1.0:
            raise ValueError(f"anchor must be in [0, 1), got {anchor}")
        self.prox = DnCNN(channels, spectral_norm=True)
        self.equilibrium = equilibrium
        self.norm = norm
        self.anchor = float(anchor)
        self.train(self.training)  # "fixed": BatchNorm in eval mode from the start

    def is_equilibrium(self) -> bool:
        return True

    def train(self, mode: bool = True) -> DEQ4IP:
        """With ``norm="fixed"`` the BatchNorm layers stay in eval mode (fixed affine maps) in
        training too: in the forward solve, in the backward's recomputation and in inference."""
        super().train(mode)
        if self.norm == "fixed":
            for m in self.prox.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(False)
        return self

    def forward(
        self, y: Tensor, op: LinearOperator, x0: Tensor, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        if self.training:
            power_iteration_(self.prox)
        self.records = []

        # B W y is injected once; each iteration then needs B W A x only (B = step_scale A^T or
        # FBP; W the ray weights of y, fixed during the solve).
        data = self.data_consistency
        weights = data.ray_weights(y)

        def back_project(residual: Tensor) -> Tensor:
            return data.back_project(residual, op, self.step_scale, weights)

        mu = self.anchor
        anchor_point = x0.detach()

        def step(x: Tensor, by: Tensor) -> Tensor:
            if not mu:
                d = conv_layout(x + self.step * (by - back_project(op.A(x))))
                return d + self.prox(d)
            lam = self.step.clamp(0.0, 2.0 / (1.0 + mu))
            r = by - back_project(op.A(x)) - mu * (x - anchor_point)
            d = conv_layout(x + lam * r)
            return d + self.prox(d)

        params = [p for p in self.parameters() if p.requires_grad]
        with frozen_batchnorm_stats(self.prox):
            x, info = equilibrium(
                step,
                back_project,
                (y,),
                params,
                x0,
                self.equilibrium,
                probe=self.jacobian_probe,
                # The whole batch: the operator's masks / ray weights are per sample.
                penalty=y.shape[0] if self.jacobian_penalty and self.training else 0,
            )
        info["stage"] = 0
        self.records = [info]
        if self.training and self.norm == "batch":
            with torch.no_grad():  # one application to move the BatchNorm running statistics
                self.prox(data(x, y, op, self.step, self.step_scale, weights))
        return (x, [x]) if return_intermediates else x
