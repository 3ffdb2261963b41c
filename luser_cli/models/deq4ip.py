"""DEQ4IP (Gilton, Ongie & Willett 2021): the whole proximal-gradient step as one equilibrium.

The fixed point ``x* = T(x*)`` of ``T(x) = d(x) + DnCNN(d(x))`` with
``d(x) = x + lam * A^T (y - A x)`` is found by Anderson acceleration from ``x0`` and trained by
implicit differentiation. Every iteration applies ``A`` and ``A^T`` once, which is the cost the
LUSER paper contrasts with its fixed K = 8 gradient steps.

BatchNorm inside a fixed-point map: during the solve and its backward the running statistics are
frozen (every application must be the same function); they are updated once per training step,
from the final iterate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from luser_cli.models.dncnn import DnCNN
from luser_cli.models.spectral_norm import power_iteration_
from luser_cli.models.unrolled import DataStep, ReconstructionModel, conv_layout
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
        channels: int,
        step_scale: float,
        equilibrium: EquilibriumConfig,
        data_step: DataStep = "gradient",
        ray_weight_power: float = 0.0,
        mu_max: float | None = None,
    ) -> None:
        super().__init__(step_scale, data_step, ray_weight_power, mu_max)
        self.prox = DnCNN(channels, spectral_norm=True)
        self.equilibrium = equilibrium

    def is_equilibrium(self) -> bool:
        return True

    def forward(
        self, y: Tensor, op: LinearOperator, x0: Tensor, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        if self.training:
            power_iteration_(self.prox)
        self.records = []

        # B W y is injected once; each iteration then needs B W A x only (B = step_scale A^T or
        # FBP; W the ray weights of y, fixed during the solve).
        weights = self.ray_weights(y)

        def inject(y_: Tensor) -> Tensor:
            return self.back_project(y_, op, weights)

        def step(x: Tensor, by: Tensor) -> Tensor:
            d = conv_layout(x + self.step * (by - self.back_project(op.A(x), op, weights)))
            return d + self.prox(d)

        params = [p for p in self.parameters() if p.requires_grad]
        with frozen_batchnorm_stats(self.prox):
            x = equilibrium(step, inject, (y,), params, x0, self.equilibrium, self.records)
        for rec in self.records:
            rec["stage"] = 0
        if self.training:
            with torch.no_grad():  # one application to move the BatchNorm running statistics
                self.prox(self.gradient_step(x, y, op, weights))
        return (x, [x]) if return_intermediates else x
