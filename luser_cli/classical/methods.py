"""Classical reconstructions: the baselines every learned model is compared to.

=============  ==========  ====================================================================
method         tasks       result ``(B, C, H, W)`` in the task's image units
=============  ==========  ====================================================================
``input``      deblur      the blurred, noisy measurement ``y`` itself
``adjoint``    all         ``A^T y / ||A||^2`` (as :func:`luser_cli.physics.initial_estimate`)
``fbp``        ct          filtered back-projection with the Hann filter
``zero-filled`` mri4x/8x   ``A^T y`` (fastMRI's zero-filled reconstruction; ``||A|| = 1``)
``tv``         all         total-variation regularised least squares, :func:`tv_reconstruct`
=============  ==========  ====================================================================

TV weight. ``tv`` minimises ``1/2 ||A x - y||^2 + lambda TV(x)`` with

    lambda = tv_weight * scale * ||A||^2,

``tv_weight`` a dimensionless *relative* weight and ``scale`` the intensity scale of each sample
(:func:`intensity_scale`: a robust maximum, the 99th percentile of the pixel magnitude, of the
task's reference image: ``y`` for deblurring, the FBP for CT, ``|A^T y|`` for MRI). Because
``lambda`` scales with the data, ``tv(c y) = c tv(y)``: one default serves images in [0, 1],
raw fastMRI k-space (~1e-4) and LoDoPaB sinograms alike. The factor ``||A||^2`` (1 for the blur
and MRI operators) makes the weight independent of the measurement units (metres for CT).
The defaults in :data:`TV_DEFAULTS` were tuned on images other than those reported in
``examples/classical-baselines.md`` (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from luser_cli.classical.tv import robust_max, tv_reconstruct
from luser_cli.errors import ConfigError
from luser_cli.operators.base import LinearOperator
from luser_cli.tasks import get_task

__all__ = [
    "CLASSICAL_METHODS",
    "TV_DEFAULTS",
    "TVDefaults",
    "default_method",
    "intensity_scale",
    "methods_for",
    "reconstruct_classical",
    "tv_weight",
]

CLASSICAL_METHODS: tuple[str, ...] = ("input", "adjoint", "fbp", "zero-filled", "tv")

#: The task each task-specific method needs (``adjoint`` and ``tv`` fit every task).
_METHOD_TASKS: dict[str, str] = {"input": "deblur", "fbp": "ct", "zero-filled": "mri4x or mri8x"}


@dataclass(frozen=True)
class TVDefaults:
    """Per-task TV settings: relative weight, PDHG iterations, non-negativity, step balance."""

    weight: float
    iterations: int
    nonneg: bool
    balance: float = 1.0


#: Tuned defaults (see ``examples/classical_baselines.py`` and the module docstring).
TV_DEFAULTS: dict[str, TVDefaults] = {
    "deblur": TVDefaults(weight=0.004, iterations=300, nonneg=True),
    "ct": TVDefaults(weight=0.004, iterations=400, nonneg=True),
    "mri4x": TVDefaults(weight=0.004, iterations=300, nonneg=False),
    "mri8x": TVDefaults(weight=0.004, iterations=300, nonneg=False),
}


def methods_for(task: str) -> tuple[str, ...]:
    """The classical methods that fit ``task``, e.g. ``("input", "adjoint", "tv")`` for deblur."""
    return get_task(task).classical_methods


def default_method(task: str) -> str:
    """The strongest classical baseline for ``task`` (what evaluation compares against): ``tv``."""
    get_task(task)
    return "tv"


def check_method(method: str, task: str) -> None:
    """Raise :class:`ConfigError` (one line) unless ``method`` fits ``task``."""
    offered = methods_for(task)
    if method not in CLASSICAL_METHODS:
        raise ConfigError(
            f"unknown method {method!r}; choose one of: {', '.join(CLASSICAL_METHODS)}"
        )
    if method not in offered:
        raise ConfigError(
            f"method {method!r} needs task {_METHOD_TASKS.get(method, '?')}; "
            f"task {task} offers: {', '.join(offered)}"
        )


def _fbp(op: LinearOperator, y: Tensor) -> Tensor:
    from luser_cli.operators.fbp import filtered_back_projection

    return filtered_back_projection(op, y, filter="hann")


def reference_image(task: str, op: LinearOperator, y: Tensor) -> Tensor:
    """The task's cheap image-domain estimate, used to start TV and to measure the intensity
    scale: ``y`` (deblur), Hann FBP (CT), ``A^T y`` (MRI). ``(B, C, H, W)``."""
    spec = get_task(task)
    if spec.initial_estimate == "measurement":
        return y
    if spec.name == "ct":
        return _fbp(op, y)
    return op.A_adjoint(y) / op.norm_sq()


def intensity_scale(task: str, op: LinearOperator, y: Tensor) -> Tensor:
    """Per-sample intensity scale ``(B,)`` of the data: robust max of :func:`reference_image`.

    Linear in the data: ``intensity_scale(c y) = c * intensity_scale(y)`` for ``c > 0``.
    """
    return robust_max(reference_image(task, op, y))


def tv_weight(task: str, op: LinearOperator, y: Tensor, relative: float | None = None) -> Tensor:
    """The absolute per-sample TV weight ``(B,)``: ``relative * intensity_scale * ||A||^2``
    (``relative`` defaults to the task's tuned :data:`TV_DEFAULTS` weight)."""
    rel = TV_DEFAULTS[get_task(task).name].weight if relative is None else float(relative)
    if rel < 0:
        raise ConfigError(f"TV weight must be >= 0, got {rel}")
    return rel * intensity_scale(task, op, y) * op.norm_sq()


@torch.no_grad()
def reconstruct_classical(
    method: str,
    task: str,
    op: LinearOperator,
    y: Tensor,
    *,
    tv_weight: float | None = None,
    iterations: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Reconstruct ``(B, C, H, W)`` images from measurements ``y`` with a classical method.

    Args:
        method: one of :data:`CLASSICAL_METHODS` that fits the task (see :func:`methods_for`).
        task: task name (``deblur``, ``ct``, ``mri4x``, ``mri8x``).
        op: the task's operator (from :func:`luser_cli.physics.build_operator`).
        y: measurements ``(B, *op.measurement_shape())``.
        tv_weight: relative TV weight (dimensionless, see the module docstring); default: the
            task's tuned value. Only for ``tv``.
        iterations: PDHG iterations for ``tv``; default: the task's tuned value.
        progress: ``progress(k, iterations)`` callback for ``tv``.

    Returns:
        Images in the task's units (deblur/CT: [0, 1] scale; MRI: real/imag in k-space units).

    Raises:
        ConfigError: for an unknown method or one that does not fit the task.
    """
    spec = get_task(task)
    check_method(method, spec.name)
    if method == "input":
        return y.clone()
    if method == "adjoint":
        return op.A_adjoint(y) / op.norm_sq()
    if method == "zero-filled":
        return op.A_adjoint(y)
    if method == "fbp":
        return _fbp(op, y)
    # tv
    defaults = TV_DEFAULTS[spec.name]
    n_iter = defaults.iterations if iterations is None else int(iterations)
    if n_iter < 0:
        raise ConfigError(f"TV iterations must be >= 0, got {n_iter}")
    x0 = reference_image(spec.name, op, y)
    scale = robust_max(x0)
    rel = defaults.weight if tv_weight is None else float(tv_weight)
    if rel < 0:
        raise ConfigError(f"TV weight must be >= 0, got {rel}")
    weight = rel * scale * op.norm_sq()
    return tv_reconstruct(
        op,
        y,
        weight,
        iterations=n_iter,
        x0=x0,
        nonneg=defaults.nonneg,
        progress=progress,
        balance=defaults.balance,
    )
