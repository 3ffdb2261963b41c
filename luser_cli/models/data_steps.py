"""The data-consistency step of every model, as a module chosen once at construction.

Each stage (and each DEQ4IP iteration) takes::

    d = x + step * B W (y - A x)

``step`` is the model's one learnable scalar (initialised to 1) and ``step_scale`` its fixed
buffer ``1 / ||A||^2``: both stay on the model, where checkpoints keep them. ``B`` maps a
measurement residual to the image:

* :class:`GradientStep` (the paper's): ``B = step_scale * A^T``, a gradient step on
  ``1/2 ||A x - y||^2``; the scale makes ``step`` dimensionless whatever the operator's units;
* :class:`FBPStep` (CT only): ``B`` = the Hann filtered back-projection, a preconditioned step
  (``B A ~ I`` on the image's frequencies, where ``A^T A`` damps high frequencies by ``1/|nu|``
  and a plain gradient step barely moves them). Same operator calls per stage (one ``A``, one
  ``A^T``) plus an FFT of the residual sinogram; measured on CT at 64 px it gains 0.4-0.5 dB at
  equal training steps (``examples/quality-bars.md``).

:class:`RayWeights` ``W`` (CT only, either step) weights each ray of the residual by its
statistical reliability. Post-log Poisson data of a ray with ``N`` detected photons have
variance ``~ 1 / N``, and ``N / N0 = exp(-mu_max y)`` is known from the measurement itself (as in
penalised weighted least squares); at LoDoPaB's dose the counts of one sinogram span a factor of
several hundred, so the rays through the densest parts carry most of the noise. ``W`` is
``(N / N0)^p`` normalised to mean 1 per sinogram (so ``step`` keeps its scale): ``p = 0`` (the
paper's, no weights) weights every ray alike, ``p = 1`` is the inverse noise variance. With the
FBP step, ``p = 0.5`` trains best on CT (``examples/quality-bars.md``); ``p = 1`` starves the
dense rays.

The modules hold no parameters and no buffers: a model's state dict is the same whichever step
it takes. :func:`data_step_from_physics` builds one from a task's physics settings (the CT data's
``mu_max`` for the weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from torch import Tensor, nn

from luser_cli.operators.base import LinearOperator
from luser_cli.operators.fbp import filtered_back_projection
from luser_cli.operators.noise import relative_counts
from luser_cli.tasks import CTPhysics, PhysicsSettings

#: How a stage maps the measurement residual back to the image (``model.data_step``).
DataStep = Literal["gradient", "fbp"]
DATA_STEPS: tuple[str, ...] = get_args(DataStep)


def count_weights(y: Tensor, mu_max: float, power: float) -> Tensor:
    """Weights ``(B, *y.shape[1:])`` of post-log CT data ``y`` (normalised line integrals, as
    LoDoPaB stores them): each ray's relative photon count (:func:`relative_counts`) to the
    ``power``, divided by its mean over the sinogram. No gradient flows into ``y``."""
    w = relative_counts(y.detach().clamp_min(0), power * mu_max)  # (N / N0)^p = exp(-p mu y)
    return w / w.mean(dim=tuple(range(1, w.dim())), keepdim=True)


@dataclass(frozen=True)
class RayWeights:
    """``W``: the per-ray count weights (:func:`count_weights`) of post-log CT data with
    attenuation scale ``mu_max`` (``physics.mu_max``), to the power ``power`` in ``(0, 1]``."""

    mu_max: float
    power: float

    def __post_init__(self) -> None:
        if not 0.0 < self.power <= 1.0:
            raise ValueError(f"ray_weight_power must be in (0, 1] for weights, got {self.power}")

    def __call__(self, y: Tensor) -> Tensor:
        return count_weights(y, float(self.mu_max), self.power)


class DataConsistency(nn.Module):
    """``(x, y, op) -> d = x + step * B W (y - A x)`` with ``B`` chosen by the subclass."""

    #: The ``model.data_step`` setting this module implements.
    kind: ClassVar[str] = ""

    def __init__(self, weights: RayWeights | None = None) -> None:
        super().__init__()
        #: The ray weights ``W`` (None: every ray alike). A plain attribute: no state.
        self.weights = weights

    @property
    def ray_weight_power(self) -> float:
        return self.weights.power if self.weights is not None else 0.0

    def ray_weights(self, y: Tensor) -> Tensor | None:
        """``W`` for measurements ``y`` (same shape; None when unweighted). Computed once per
        forward by the model and handed to every step of it."""
        return None if self.weights is None else self.weights(y)

    def map_residual(self, residual: Tensor, op: LinearOperator, step_scale: Tensor) -> Tensor:
        """``B r``: a measurement-domain ``r`` to an image ``(B, C, H, W)`` in image units."""
        raise NotImplementedError

    def back_project(
        self,
        residual: Tensor,
        op: LinearOperator,
        step_scale: Tensor,
        weights: Tensor | None = None,
    ) -> Tensor:
        """``B W r`` for a residual ``(B, *op.measurement_shape())``, weighted by ``weights``
        (same shape, from :meth:`ray_weights`) if given; ``step_scale``: the model's buffer."""
        if weights is not None:
            residual = weights * residual
        return self.map_residual(residual, op, step_scale)

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        op: LinearOperator,
        step: Tensor,
        step_scale: Tensor,
        weights: Tensor | None = None,
    ) -> Tensor:
        """``d = x + step * B W (y - A x)``; ``step`` / ``step_scale``: the model's."""
        return x + step * self.back_project(y - op.A(x), op, step_scale, weights)

    def extra_repr(self) -> str:
        return f"ray_weight_power={self.ray_weight_power:g}" if self.weights is not None else ""


class GradientStep(DataConsistency):
    """``B = step_scale * A^T``: a gradient step on ``1/2 ||A x - y||^2`` (the paper's)."""

    kind = "gradient"

    def map_residual(self, residual: Tensor, op: LinearOperator, step_scale: Tensor) -> Tensor:
        return step_scale * op.A_adjoint(residual)


class FBPStep(DataConsistency):
    """``B`` = the Hann filtered back-projection (CT only; already in image units)."""

    kind = "fbp"

    def map_residual(self, residual: Tensor, op: LinearOperator, step_scale: Tensor) -> Tensor:
        return filtered_back_projection(op, residual, filter="hann")


_STEPS: dict[str, type[DataConsistency]] = {"gradient": GradientStep, "fbp": FBPStep}


def build_data_step(
    kind: str = "gradient", *, ray_weight_power: float = 0.0, mu_max: float | None = None
) -> DataConsistency:
    """The data step ``kind`` (one of :data:`DATA_STEPS`), with ray weights of power
    ``ray_weight_power`` (0: none; otherwise the data's ``mu_max`` is needed)."""
    if kind not in DATA_STEPS:
        raise ValueError(f"data_step must be one of {DATA_STEPS}, got {kind!r}")
    if not 0.0 <= ray_weight_power <= 1.0:
        raise ValueError(f"ray_weight_power must be in [0, 1], got {ray_weight_power}")
    weights = None
    if ray_weight_power:
        if mu_max is None:
            raise ValueError("ray weights need the data's mu_max (CT)")
        weights = RayWeights(float(mu_max), float(ray_weight_power))
    return _STEPS[kind](weights)


def data_step_from_physics(
    kind: str, physics: PhysicsSettings, ray_weight_power: float = 0.0
) -> DataConsistency:
    """:func:`build_data_step` for a task's typed physics settings: the ray weights take
    ``mu_max`` from CT physics (other tasks have no photon counts to weight by)."""
    mu_max = physics.mu_max if isinstance(physics, CTPhysics) else None
    return build_data_step(kind, ray_weight_power=ray_weight_power, mu_max=mu_max)
