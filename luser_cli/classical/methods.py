"""Classical reconstructions: the baselines every learned model is compared to.

Methods (results ``(B, C, H, W)`` in the task's image units):

- ``input`` (deblur): the blurred, noisy measurement ``y`` itself;
- ``adjoint`` (all tasks): ``A^T y / ||A||^2``, as :func:`luser_cli.physics.initial_estimate`;
- ``fbp`` (ct): filtered back-projection with the Hann filter;
- ``zero-filled`` (mri4x, mri8x): ``A^T y``, fastMRI's zero-filled image (``||A|| = 1``);
- ``tv`` (all tasks): total-variation regularised least squares,
  :func:`~luser_cli.classical.tv.tv_reconstruct`, with tuned per-task defaults.

TV weight. ``tv`` minimises ``1/2 ||A x - y||^2 + lambda TV(x)`` with

    lambda = tv_weight * scale * gain,

``tv_weight`` a dimensionless *relative* weight; ``scale`` the intensity scale of each sample
(:func:`intensity_scale`: the 99th percentile of the pixel magnitude of the task's reference
image: ``y`` for deblurring, the Hann FBP for CT, ``|A^T y|`` for MRI); ``gain`` the operator
factor (:func:`operator_gain`: ``||A||^2``, times ``N / 362`` for CT). Because ``lambda`` scales
with the data, ``tv(c y) = c tv(y)``: one default serves images in [0, 1], raw fastMRI k-space
(~1e-4) and LoDoPaB sinograms alike, and ``gain`` makes it independent of the measurement units
(metres for CT) and of the CT image size. The defaults in :data:`TV_DEFAULTS` were tuned on
images other than those reported in ``examples/classical-baselines.md`` (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from luser_cli.classical.tv import robust_max, tv_reconstruct
from luser_cli.errors import ConfigError
from luser_cli.operators.base import LinearOperator
from luser_cli.tasks import TASKS, get_task

#: LoDoPaB-CT's image side, the reference size of the CT weight (see :func:`operator_gain`).
LODOPAB_SIZE = 362

__all__ = [
    "CLASSICAL_METHODS",
    "TV_DEFAULTS",
    "TVDefaults",
    "absolute_tv_weight",
    "check_method",
    "default_method",
    "intensity_scale",
    "methods_for",
    "operator_gain",
    "reconstruct_classical",
    "reference_image",
]

CLASSICAL_METHODS: tuple[str, ...] = ("input", "adjoint", "fbp", "zero-filled", "tv")

#: The tasks each task-specific method needs, as the error names them (``input``: deblur,
#: ``fbp``: ct, ``zero-filled``: mri4x or mri8x; ``adjoint`` and ``tv`` fit every task).
_METHOD_TASKS: dict[str, str] = {
    m: " or ".join(t.name for t in TASKS.values() if m in t.classical_methods)
    for m in CLASSICAL_METHODS
}


@dataclass(frozen=True)
class TVDefaults:
    """Per-task TV settings: relative weight, PDHG iterations, non-negativity, step balance."""

    weight: float
    iterations: int
    nonneg: bool
    balance: float = 1.0


#: Tuned defaults (see ``examples/classical_baselines.py`` and the module docstring).
TV_DEFAULTS: dict[str, TVDefaults] = {
    "deblur": TVDefaults(weight=5e-4, iterations=300, nonneg=False, balance=1.0),
    "ct": TVDefaults(weight=4e-3, iterations=400, nonneg=True, balance=0.3),
    "mri4x": TVDefaults(weight=4e-3, iterations=400, nonneg=False, balance=0.3),
    "mri8x": TVDefaults(weight=1.6e-2, iterations=400, nonneg=False, balance=0.3),
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
    if spec.has_fbp:
        return _fbp(op, y)
    return op.A_adjoint(y) / op.norm_sq()


def intensity_scale(task: str, op: LinearOperator, y: Tensor) -> Tensor:
    """Per-sample intensity scale ``(B,)`` of the data: robust max of :func:`reference_image`.

    Linear in the data: ``intensity_scale(c y) = c * intensity_scale(y)`` for ``c > 0``.
    """
    return robust_max(reference_image(task, op, y))


def operator_gain(task: str, op: LinearOperator) -> float:
    """The operator factor of the TV weight.

    ``||A||^2`` for deblurring and MRI (exactly 1 for their operators). For CT,
    ``||A||^2 * N / 362``: a parallel-beam operator over LoDoPaB's fixed field of view has
    ``||A||^2`` proportional to ``1 / N`` (pixel size), while the best absolute weight hardly
    changes with ``N`` (measured at N = 64 and 127 on four tuning images: the best relative
    weight doubled with N under plain ``||A||^2``). This makes the relative weight independent
    of the image size, and equal to the plain ``||A||^2`` form at LoDoPaB's 362 x 362.
    """
    spec = get_task(task)
    gain = float(op.norm_sq())
    if spec.modality == "ct":
        gain *= op.image_shape[-1] / LODOPAB_SIZE
    return gain


def _relative_weights(task: str, relative: float | Tensor | None, like: Tensor) -> Tensor:
    """Validated relative weight(s) as a tensor: a scalar or ``(B,)`` (default: tuned)."""
    rel = TV_DEFAULTS[get_task(task).name].weight if relative is None else relative
    rel_t = torch.as_tensor(rel, dtype=like.dtype, device=like.device)
    if rel_t.ndim > 1 or (rel_t.ndim == 1 and rel_t.numel() not in (1, like.shape[0])):
        raise ConfigError(
            f"TV weight must be one number or one per sample, got {tuple(rel_t.shape)}"
        )
    if not bool(torch.isfinite(rel_t).all()) or bool((rel_t < 0).any()):
        raise ConfigError(f"TV weight must be a finite number >= 0, got {relative}")
    return rel_t


def absolute_tv_weight(
    task: str,
    op: LinearOperator,
    y: Tensor,
    relative: float | Tensor | None = None,
    *,
    reference: Tensor | None = None,
) -> Tensor:
    """The absolute per-sample TV weight ``(B,)``: ``relative * intensity_scale * gain``.

    ``relative``: a float or ``(B,)`` tensor (default: the task's tuned :data:`TV_DEFAULTS`
    weight); ``reference``: :func:`reference_image` if already computed; ``gain`` from
    :func:`operator_gain`.
    """
    ref = reference_image(task, op, y) if reference is None else reference
    rel = _relative_weights(task, relative, ref)
    return rel * robust_max(ref) * operator_gain(task, op)


@torch.no_grad()
def reconstruct_classical(
    method: str,
    task: str,
    op: LinearOperator,
    y: Tensor,
    *,
    tv_weight: float | Tensor | None = None,
    iterations: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Reconstruct ``(B, C, H, W)`` images from measurements ``y`` with a classical method.

    Args:
        method: one of :data:`CLASSICAL_METHODS` that fits the task (see :func:`methods_for`).
        task: task name (``deblur``, ``ct``, ``mri4x``, ``mri8x``).
        op: the task's operator (from :func:`luser_cli.physics.build_operator`).
        y: measurements ``(B, *op.measurement_shape())`` in the operator's units.
        tv_weight: relative TV weight (dimensionless, see the module docstring), one number or a
            ``(B,)`` tensor with one per sample; default: the task's tuned value. Only for ``tv``.
        iterations: PDHG iterations for ``tv``; default: the task's tuned value.
        progress: ``progress(k, iterations)`` callback for ``tv``.

    Returns:
        ``(B, C, H, W)`` in the task's image units (deblur / CT: the [0, 1] scale; MRI: real and
        imaginary parts in the units of ``A^T y``), same dtype and device as ``y``.

    Raises:
        ConfigError: for an unknown method, one that does not fit the task, or bad TV settings.
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
    defaults = TV_DEFAULTS[spec.name]
    n_iter = defaults.iterations if iterations is None else int(iterations)
    if n_iter < 0:
        raise ConfigError(f"TV iterations must be >= 0, got {n_iter}")
    x0 = reference_image(spec.name, op, y)
    weight = absolute_tv_weight(spec.name, op, y, tv_weight, reference=x0)
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
