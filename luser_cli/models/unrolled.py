"""Loop-unrolled proximal-gradient networks: LU-DnCNN, LUSER-SW and LUSER-DW.

K stages from the initial estimate ``x0``::

    d_k     = x_k + step * B (y - A x_k)       # data-consistency step
    x_{k+1} = d_k + prox_k(d_k)                # learned residual update

``step`` is the one learnable scalar (initialised to 1). ``B`` maps a measurement residual to
the image, chosen by ``data_step``:

* ``gradient`` (the paper's): ``B = step_scale * A^T``, a gradient step on ``1/2 ||A x - y||^2``;
  ``step_scale`` is the fixed buffer ``1 / ||A||^2``, so ``step`` is dimensionless whatever the
  operator's units;
* ``fbp`` (CT only): ``B`` = the Hann filtered back-projection, a preconditioned step
  (``B A ~ I`` on the image's frequencies, where ``A^T A`` damps high frequencies by ``1/|nu|``
  and a plain gradient step barely moves them). Same operator calls per stage (one ``A``, one
  ``A^T``) plus an FFT of the residual sinogram; measured on CT at 64 px it gains 0.4-0.5 dB at
  equal training steps (``examples/quality-bars.md``).

``ray_weight_power`` ``p`` (CT only) weights each ray of the residual ``y - A x`` before ``B``
by its statistical reliability. Post-log Poisson data of a ray with ``N`` detected photons have
variance ``~ 1 / N``, and ``N / N0 = exp(-mu_max y)`` is known from the measurement itself (as in
penalised weighted least squares); at LoDoPaB's dose the counts of one sinogram span a factor of
several hundred, so the rays through the densest parts carry most of the noise. ``W`` is
``(N / N0)^p`` normalised to mean 1 per sinogram (so ``step`` keeps its scale): ``p = 0`` (the
paper's) weights every ray alike, ``p = 1`` is the inverse noise variance. With the FBP step,
``p = 0.5`` trains best on CT (``examples/quality-bars.md``); ``p = 1`` starves the dense rays.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from luser_cli.models.spectral_norm import power_iteration_
from luser_cli.operators.base import LinearOperator
from luser_cli.operators.fbp import filtered_back_projection
from luser_cli.operators.noise import relative_counts
from luser_cli.solvers.config import EquilibriumConfig

#: How a stage maps the measurement residual back to the image (``model.data_step``).
DataStep = Literal["gradient", "fbp"]
DATA_STEPS: tuple[str, ...] = get_args(DataStep)


def count_weights(y: Tensor, mu_max: float, power: float) -> Tensor:
    """Weights ``(B, *y.shape[1:])`` of post-log CT data ``y`` (normalised line integrals, as
    LoDoPaB stores them): each ray's relative photon count (:func:`relative_counts`) to the
    ``power``, divided by its mean over the sinogram. No gradient flows into ``y``."""
    w = relative_counts(y.detach().clamp_min(0), power * mu_max)  # (N / N0)^p = exp(-p mu y)
    return w / w.mean(dim=tuple(range(1, w.dim())), keepdim=True)


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
    """Common interface: ``model(y, op, x0) -> x`` with per-stage solver records."""

    #: Registry name ("lu-dncnn", "deq4ip", "luser-sw", "luser-dw").
    name: str = ""
    #: Diagnostics: power iterations of the Jacobian spectral-radius estimate recorded per
    #: equilibrium in :attr:`records` (``jacobian_spectral_radius``); 0 = none (the default).
    jacobian_probe: int = 0

    def __init__(
        self,
        step_scale: float,
        data_step: DataStep = "gradient",
        ray_weight_power: float = 0.0,
        mu_max: float | None = None,
    ) -> None:
        super().__init__()
        if data_step not in DATA_STEPS:
            raise ValueError(f"data_step must be one of {DATA_STEPS}, got {data_step!r}")
        if not 0.0 <= ray_weight_power <= 1.0:
            raise ValueError(f"ray_weight_power must be in [0, 1], got {ray_weight_power}")
        if ray_weight_power and mu_max is None:
            raise ValueError("ray weights need the data's mu_max (CT)")
        self.data_step = data_step
        self.ray_weight_power = float(ray_weight_power)
        #: Attenuation scale of the post-log data (``physics.mu_max``), for the count weights.
        self.mu_max = mu_max
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("step_scale", torch.tensor(float(step_scale)))
        #: Per-stage solver statistics of the last forward (and, once run, its backward).
        self.records: list[dict] = []

    def ray_weights(self, y: Tensor) -> Tensor | None:
        """The residual's per-ray weights for measurements ``y`` (None when unweighted)."""
        if not self.ray_weight_power:
            return None
        return count_weights(y, float(self.mu_max), self.ray_weight_power)

    def back_project(
        self, residual: Tensor, op: LinearOperator, weights: Tensor | None = None
    ) -> Tensor:
        """``B W r``: a measurement-domain ``residual`` ``(B, *op.measurement_shape())``,
        weighted by ``weights`` (same shape) if given, mapped to an image ``(B, C, H, W)`` in
        image units (``step_scale A^T`` or ``FBP``)."""
        if weights is not None:
            residual = weights * residual
        if self.data_step == "fbp":
            return filtered_back_projection(op, residual, filter="hann")
        return self.step_scale * op.A_adjoint(residual)

    def gradient_step(
        self, x: Tensor, y: Tensor, op: LinearOperator, weights: Tensor | None
    ) -> Tensor:
        """The data-consistency step ``d = x + step * B W (y - A x)`` (module docstring);
        ``weights`` = :meth:`ray_weights` of ``y``, computed once per forward by the caller."""
        return x + self.step * self.back_project(y - op.A(x), op, weights)

    def is_equilibrium(self) -> bool:
        return False


class LoopUnrolled(ReconstructionModel):
    """K unrolled stages with a DnCNN or shallow-equilibrium proximal network.

    ``prox`` holds one module (shared weights) or ``stages`` modules (different weights).
    With ``equilibrium`` set, each prox is a :class:`ShallowEquilibriumBlock` solved to a fixed
    point with those solver settings; otherwise a feed-forward network trained by backprop.
    """

    def __init__(
        self,
        name: str,
        prox: list[nn.Module],
        stages: int,
        step_scale: float,
        equilibrium: EquilibriumConfig | None = None,
        data_step: DataStep = "gradient",
        ray_weight_power: float = 0.0,
        mu_max: float | None = None,
    ) -> None:
        super().__init__(step_scale, data_step, ray_weight_power, mu_max)
        if len(prox) not in (1, stages):
            raise ValueError(f"need 1 or {stages} proximal networks, got {len(prox)}")
        self.name = name
        self.stages = stages
        self.prox = nn.ModuleList(prox)
        self.equilibrium = equilibrium

    def is_equilibrium(self) -> bool:
        return self.equilibrium is not None

    def shared_weights(self) -> bool:
        return len(self.prox) == 1

    def forward(
        self, y: Tensor, op: LinearOperator, x0: Tensor, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """``y``: measurements ``(B, *op.measurement_shape())``; ``x0``: ``(B, C, H, W)``.

        Returns ``x_K`` (``(B, C, H, W)``), and the list ``[x_1, ..., x_K]`` when asked.
        """
        if self.training and self.equilibrium is not None:
            power_iteration_(self.prox)
        self.records = []
        weights = self.ray_weights(y)
        x = x0
        outputs = []
        for k in range(self.stages):
            prox = self.prox[0 if self.shared_weights() else k]
            d = conv_layout(self.gradient_step(x, y, op, weights))
            if self.equilibrium is not None:
                stage_record: list[dict] = []
                r = prox(d, self.equilibrium, stage_record, self.jacobian_probe)
                for rec in stage_record:
                    rec["stage"] = k
                self.records.extend(stage_record)
            else:
                r = prox(d)
            x = d + r
            outputs.append(x)
        return (x, outputs) if return_intermediates else x
