"""Turn an image or a volume into a task's simulated measurements (``luser simulate``).

Steps: read the input (:func:`luser_cli.io.images.read_image_stack`: PNG/JPEG/TIFF, ``.npy`` or
NIfTI, values in [0, 1] by dtype range, no per-image rescaling); bring each image to the task's
channels (:func:`luser_cli.data.transforms.to_task_channels`) and to a square of the requested
size (:func:`luser_cli.data.transforms.resize_square`: centre crop to a square, then an
anti-aliased resize; by default the crop's own size is kept); simulate ``y = restrict(noise(A x))``
with the task's operator and its noise (:meth:`~luser_cli.operators.base.LinearOperator.measure`);
write luser's measurement file with the ground truth.

Reproducibility: the noise of slice ``i`` is drawn from its own generator seeded with
``file_noise_seed(seed, i)``, so results do not depend on the batch size; MRI masks are seeded per
input file name and slice with :func:`luser_cli.operators.masks.mask_seed`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from luser_cli.errors import ConfigError
from luser_cli.tasks import MAX_IMAGE_SIZE, MAX_SEED, get_task

if TYPE_CHECKING:
    from luser_cli.operators.base import LinearOperator

MEASUREMENT_SUFFIXES = (".h5", ".hdf5")


def file_noise_seed(seed: int, index: int) -> int:
    """The noise seed of slice ``index`` for the user's ``seed`` (stable across machines)."""
    digest = hashlib.sha256(f"luser-noise:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def parse_physics_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["noise_std=0.02", "angle_step=10"]`` -> ``{"noise_std": 0.02, "angle_step": 10}``.

    Values are parsed as JSON when possible (numbers, true/false), else kept as strings; the
    task's physics model validates them.
    """
    import json

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--physics expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value.strip()
    return out


@dataclass
class PreparedImages:
    """``images`` float32 ``(N, C, S, S)`` in the task's layout; ``affine`` adjusted for the crop
    and resize (NIfTI inputs) or None."""

    images: np.ndarray
    affine: np.ndarray | None


def prepare_images(
    images: np.ndarray, task: str, image_size: int | None, affine: np.ndarray | None = None
) -> PreparedImages:
    """``(N, C, H, W)`` images in [0, 1] -> the task's channels at ``image_size`` (square)."""
    from luser_cli.data.transforms import resize_square, to_task_channels
    from luser_cli.io.nifti import crop_resize_affine

    _, _, h, w = images.shape
    crop = min(h, w)
    size = crop if image_size is None else int(image_size)
    if not 4 <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(
            f"--image-size must be between 4 and {MAX_IMAGE_SIZE} (crop larger inputs with "
            f"--image-size), got {size}"
        )
    out = np.stack([resize_square(to_task_channels(img, task), size) for img in images])
    new_affine = None
    if affine is not None:
        top, left = (h - crop) // 2, (w - crop) // 2
        new_affine = crop_resize_affine(affine, top, left, crop, size)
    return PreparedImages(np.ascontiguousarray(out, dtype=np.float32), new_affine)


@dataclass
class SimulateResult:
    output: Path
    task: str
    n: int
    image_size: int
    measurement_shape: tuple[int, ...]
    seconds: float


def simulate_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    task: str,
    image_size: int | None = None,
    seed: int = 0,
    physics: dict[str, Any] | None = None,
    batch_size: int = 16,
) -> SimulateResult:
    """Simulate measurements of every image/slice of ``input_path``; write a measurement file.

    Args:
        input_path: PNG/JPEG/TIFF, ``.npy`` or NIfTI (every slice).
        output_path: the measurement file (``.h5``), written atomically.
        task: ``deblur``, ``ct``, ``mri4x`` or ``mri8x``.
        image_size: square side; default: the input's shorter side (centre crop, no resize).
        seed: noise seed (MRI masks are seeded by the input file name and slice instead).
        physics: overrides of the task's physics settings (e.g. ``{"noise_std": 0.02}``).
    """
    from luser_cli.io.images import read_image_stack, suffix_of
    from luser_cli.io.measurement import write_measurement
    from luser_cli.physics import build_operator, mri_masks, resolve_physics
    from luser_cli.run_files import check_user_output

    t0 = time.perf_counter()
    spec = get_task(task)
    if suffix_of(output_path) not in MEASUREMENT_SUFFIXES:
        raise ConfigError(f"{output_path}: the measurement file must end in .h5 or .hdf5")
    check_user_output(output_path, (input_path,))
    if not 0 <= int(seed) <= MAX_SEED:
        raise ConfigError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    if image_size is not None and not 4 <= int(image_size) <= MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be between 4 and {MAX_IMAGE_SIZE}, got {image_size}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    phys = resolve_physics(spec, physics or {})
    stack = read_image_stack(input_path)
    prep = prepare_images(stack.images, spec.name, image_size, stack.affine)
    x_all = torch.from_numpy(prep.images)
    n, _, size, _ = x_all.shape
    name = Path(input_path).name

    masks = None
    if spec.modality == "mri":
        from luser_cli.operators.masks import mask_seed

        masks = mri_masks(phys, size, [mask_seed(name, i) for i in range(n)])
    shared = None if masks is not None else build_operator(spec, size, phys)
    ys = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            op = (
                shared
                if shared is not None
                else build_operator(spec, size, phys, masks=masks[start:stop])
            )
            ys.append(_simulate(op, x_all[start:stop], seed, start))
    y = torch.cat(ys)
    op0 = shared if shared is not None else build_operator(spec, size, phys, masks=masks[:1])
    write_measurement(
        output_path,
        task=spec.name,
        image_size=(size, size),
        physics=phys,
        measurements=y,
        ground_truth=x_all,
        masks=masks,
        kspace_size=(size, size) if masks is not None else None,
        affine=prep.affine,
        angles=_angles_of(op0),
        kernel=getattr(op0, "kernel", None) if spec.modality == "rgb" else None,
        noise=op0.noise.describe(),
        seed=seed,
        source=name,
    )
    return SimulateResult(
        Path(output_path), spec.name, n, size, tuple(y.shape[1:]), time.perf_counter() - t0
    )


def _simulate(op: LinearOperator, x: torch.Tensor, seed: int, start: int) -> torch.Tensor:
    """``restrict(noise(A x))`` with the operator's own noise
    (:meth:`~luser_cli.operators.base.LinearOperator.measure`): ``x`` ``(B, C, S, S)`` ->
    ``(B, *measurement_shape)``; slice ``i``'s noise is drawn from
    ``file_noise_seed(seed, start + i)``."""
    from luser_cli.physics import seeded_generators

    seeds = [file_noise_seed(seed, start + i) for i in range(x.shape[0])]
    return op.measure(x, seeded_generators(seeds))


def _angles_of(op: Any) -> np.ndarray | None:
    """The projection angles (radians) of a CT operator, for reference in the file."""
    for holder in (getattr(op, "geometry", None), op):
        angles = getattr(holder, "angles", None) if holder is not None else None
        if angles is not None:
            a = angles.detach().cpu().numpy() if isinstance(angles, torch.Tensor) else angles
            return np.asarray(a, dtype=np.float64).reshape(-1)
    return None
