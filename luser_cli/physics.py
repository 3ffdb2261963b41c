"""Build a task's operator and noise, simulate measurements, and form the initial estimate.

This is the one place that maps a task name + physics settings to concrete operator objects;
training, evaluation, ``simulate`` and ``reconstruct`` all go through it. The operator owns the
whole measurement: :func:`build_operator` gives it the task's noise model, and
:meth:`~luser_cli.operators.base.LinearOperator.measure` is ``restrict(noise(A x))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

from luser_cli.errors import ConfigError
from luser_cli.operators.base import LinearOperator
from luser_cli.operators.masks import random_column_mask
from luser_cli.operators.noise import GaussianNoise, NoiseModel, PostLogPoisson
from luser_cli.tasks import (
    MAX_IMAGE_SIZE,
    CTPhysics,
    DeblurPhysics,
    MRIPhysics,
    PhysicsSettings,
    TaskSpec,
    get_task,
)


def resolve_physics(
    task: str | TaskSpec, physics: PhysicsSettings | dict | None = None
) -> PhysicsSettings:
    """Validate ``physics`` (a model or a dict of overrides) against the task's physics model."""
    spec = get_task(task) if isinstance(task, str) else task
    model = spec.settings_class()
    if physics is None:
        return spec.physics_defaults
    if isinstance(physics, model):
        return physics
    if isinstance(physics, dict):
        from pydantic import ValidationError

        try:
            return model(**{**spec.physics_defaults.model_dump(), **physics})
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"physics.{field}: {err['msg']}") from None
    raise ConfigError(
        f"physics settings of type {type(physics).__name__} do not fit task {spec.name}"
    )


def mri_masks(physics: MRIPhysics, width: int, seeds: Sequence[int]) -> Tensor:
    """One fastMRI-style column mask per seed: ``(len(seeds), width)`` float32 in {0, 1}."""
    return torch.stack(
        [
            random_column_mask(width, physics.acceleration, physics.center_fraction, int(s))
            for s in seeds
        ]
    ).to(torch.float32)


def build_operator(
    task: str | TaskSpec,
    image_size: int | tuple[int, int],
    physics: PhysicsSettings | dict | None = None,
    *,
    masks: Tensor | None = None,
    kspace_size: tuple[int, int] | None = None,
) -> LinearOperator:
    """The task's forward operator for ``image_size`` (an int for square images).

    For MRI, ``masks`` is ``(N, W_k)`` (N = 1 or the batch size); when omitted one mask is drawn
    with seed 0. ``kspace_size`` (MRI only) zero-pads the image into a larger k-space grid, as for
    fastMRI files whose k-space is 640 x W while images are 320 x 320.

    The operator's ``noise`` is the task's (:func:`build_noise`), so ``op.measure(x, generator)``
    simulates the task's measurements.
    """
    spec = get_task(task) if isinstance(task, str) else task
    phys = resolve_physics(spec, physics)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(h, w) < 4:
        raise ConfigError(f"image size {h}x{w} is too small (at least 4x4)")
    if max(h, w) > MAX_IMAGE_SIZE:
        raise ConfigError(f"image size {h}x{w} is too large (at most {MAX_IMAGE_SIZE} per side)")
    # Operator modules are imported on demand: each task needs only its own.
    if isinstance(phys, DeblurPhysics):
        from luser_cli.operators.blur import GaussianBlur, gaussian_kernel

        kernel = gaussian_kernel(phys.kernel_size, phys.variance)
        op: LinearOperator = GaussianBlur((spec.channels, h, w), kernel)
    elif isinstance(phys, CTPhysics):
        if h != w:
            raise ConfigError(f"CT needs square images, got {h}x{w}")
        from luser_cli.operators.radon import CTGeometry, ParallelBeamRadon

        geometry = CTGeometry.lodopab(h, angles_total=phys.angles_total, angle_step=phys.angle_step)
        op = ParallelBeamRadon(geometry)
    elif isinstance(phys, MRIPhysics):
        from luser_cli.operators.mri import MaskedFourier

        kh, kw = kspace_size if kspace_size is not None else (h, w)
        if masks is None:
            masks = mri_masks(phys, kw, [0])
        op = MaskedFourier((h, w), masks, kspace_size=(kh, kw))
    else:
        raise ConfigError(f"no operator for physics {type(phys).__name__}")
    op.noise = build_noise(spec, phys)
    return op


def build_noise(task: str | TaskSpec, physics: PhysicsSettings | dict | None = None) -> NoiseModel:
    """The task's measurement noise model."""
    phys = resolve_physics(task, physics)
    if isinstance(phys, CTPhysics):
        return PostLogPoisson(phys.photons, phys.mu_max)
    return GaussianNoise(phys.noise_std)


def simulate(
    op: LinearOperator,
    noise: NoiseModel,
    x: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``y = restrict(noise(A x))`` with the given ``noise`` instead of the operator's own:
    :meth:`~luser_cli.operators.base.LinearOperator.measure` (``x`` ``(B, *image_shape)`` ->
    ``(B, *measurement_shape)``; one noise draw for the batch from ``generator``)."""
    return op.measure(x, generator, noise=noise)


#: Initial estimates a preset may choose (``model.initial``).
InitialEstimate = Literal["auto", "adjoint", "fbp"]
INITIAL_ESTIMATES: tuple[str, ...] = get_args(InitialEstimate)


def resolve_initial(task: str | TaskSpec, kind: str = "auto") -> str:
    """What initial estimate ``kind`` is for ``task``: ``measurement`` (``y``), ``adjoint``
    (``A^T y / ||A||^2``) or ``fbp``; ``auto`` resolves to the paper's for the task."""
    spec = get_task(task) if isinstance(task, str) else task
    if kind not in INITIAL_ESTIMATES:
        raise ConfigError(
            f"unknown initial estimate {kind!r}; choose one of: {', '.join(INITIAL_ESTIMATES)}"
        )
    return spec.initial_estimate if kind == "auto" else kind


def initial_estimate(
    task: str | TaskSpec, op: LinearOperator, y: Tensor, kind: str = "auto"
) -> Tensor:
    """``x0`` ``(B, C, H, W)`` from measurements ``y``.

    ``auto`` is the paper's: ``y`` for deblurring, ``A^T y / ||A||^2`` for CT and MRI. The
    adjoint is divided by ``||A||_2^2`` (exactly 1 for the orthonormal MRI operator) so that the
    CT back-projection lands on the image's intensity scale; this is one gradient step from zero
    with step ``1 / ||A||^2``. ``adjoint`` forces that form; ``fbp`` (CT only) is the classical
    Hann filtered back-projection, the initialisation the paper notes other CT work uses.
    """
    spec = get_task(task) if isinstance(task, str) else task
    resolved = resolve_initial(spec, kind)
    if resolved == "fbp":
        from luser_cli.classical.methods import reconstruct_classical

        return reconstruct_classical("fbp", spec.name, op, y)  # refuses tasks other than CT
    if resolved == "measurement":
        return y
    return op.A_adjoint(y) / op.norm_sq()


def output_image(task: str | TaskSpec, x: Tensor) -> Tensor:
    """What users look at and metrics compare: the magnitude ``(B, 1, H, W)`` for MRI (as
    fastMRI's ``reconstruction_esc``), the image itself otherwise."""
    spec = get_task(task) if isinstance(task, str) else task
    if spec.display == "magnitude":
        return torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per seed, ``manual_seed(int(seed))``: the per-item
    ``generator`` argument of :meth:`~luser_cli.operators.base.LinearOperator.measure`.

    Per-item seeds make a measurement independent of how items are batched or sharded across
    processes, which is what exact resume and distributed training rely on."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]
