"""Write reconstructions by output extension (every file written atomically).

Input to the writers: the displayable image ``(N, C, H, W)`` (for MRI, the magnitude from
:func:`luser_cli.physics.output_image`; :func:`write_reconstruction` applies it), in the input's
units, without rescaling, except for PNG:

=============  ==============================================================================
extension      content
=============  ==============================================================================
``.png``       8-bit. One image, or for N > 1 a grid of all slices (row-major, ``ceil(sqrt N)``
               columns, 2-pixel black gaps). Display mapping: RGB (C = 3) is clipped to [0, 1]
               and scaled by 255; single-channel images are divided by the maximum over the
               whole volume (negative values clipped to 0), so the brightest voxel is 255.
``.nii.gz``    float32 volume ``(H, W, N)`` (slice k = ``data[:, :, k]``, as
``.nii``       :mod:`luser_cli.io.nifti` reads) with the input's affine when it had one, the
               identity otherwise; RGB gives ``(H, W, N, 3)``.
``.h5``        dataset ``reconstruction`` float32 ``(N, H, W)`` (fastMRI's submission layout;
               ``(N, C, H, W)`` for RGB) plus attributes (task, method, source, luser_version).
``.npy``       raw float32 ``(N, H, W)`` for single-channel images, ``(N, C, H, W)`` otherwise.
=============  ==============================================================================
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from luser_cli.errors import ConfigError
from luser_cli.io.atomic import atomic_write_bytes
from luser_cli.io.images import suffix_of, write_png

OUTPUT_SUFFIXES: tuple[str, ...] = (".png", ".nii.gz", ".nii", ".h5", ".npy")


def output_kind(path: str | Path) -> str:
    """The output format of ``path`` by extension (one of :data:`OUTPUT_SUFFIXES`); raises a
    one-line :class:`ConfigError` for anything else. Call it before any computation."""
    suffix = suffix_of(path)
    if suffix == ".hdf5":
        suffix = ".h5"
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(
            f"{path}: unknown output format {suffix or '(no extension)'}; "
            f"use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    return suffix


def check_output(path: str | Path, inputs: tuple[str | Path, ...] = ()) -> str:
    """Validate an output path before computing: known extension, writable folder, not one of
    the input files and not a file luser owns in a run folder. Returns the output kind."""
    from luser_cli.run_files import check_user_output

    kind = output_kind(path)
    check_user_output(path, inputs)
    return kind


def to_display_uint8(images: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` float -> uint8 ``(N, H, W)`` or ``(N, H, W, 3)`` by the PNG mapping."""
    x = np.asarray(images, dtype=np.float64)
    if x.shape[1] == 3:
        out = np.clip(x, 0.0, 1.0) * 255.0
        return np.round(out).astype(np.uint8).transpose(0, 2, 3, 1)
    if x.shape[1] != 1:
        raise ValueError(f"PNG output needs 1 or 3 channels, got {x.shape[1]}")
    x = np.clip(x[:, 0], 0.0, None)
    top = float(x.max())
    scale = 255.0 / top if top > 0 else 0.0
    return np.round(x * scale).astype(np.uint8)


def tile(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """Tile ``(N, H, W[, 3])`` into one grid image, ``ceil(sqrt N)`` columns, row-major."""
    n, h, w = images.shape[:3]
    if n == 1:
        return images[0]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros(
        (rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, *images.shape[3:]),
        dtype=images.dtype,
    )
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[i]
    return grid


def write_images(
    path: str | Path,
    images: np.ndarray | Tensor,
    *,
    affine: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write displayable images ``(N, C, H, W)`` to ``path`` in the format its extension names
    (see the module docstring). Returns the path."""
    kind = output_kind(path)
    x = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    single = x.shape[1] == 1
    if kind == ".png":
        write_png(path, tile(to_display_uint8(x)))
    elif kind in (".nii", ".nii.gz"):
        from luser_cli.io.nifti import write_nifti

        vol = np.moveaxis(x[:, 0], 0, -1) if single else np.transpose(x, (2, 3, 0, 1))
        write_nifti(path, vol, affine)
    elif kind == ".h5":
        _write_h5(path, x[:, 0] if single else x, attrs or {})
    else:  # .npy
        buffer = io.BytesIO()
        np.save(buffer, x[:, 0] if single else x, allow_pickle=False)
        atomic_write_bytes(path, buffer.getbuffer())
    return Path(path)


def _write_h5(path: str | Path, data: np.ndarray, attrs: dict[str, Any]) -> None:
    from luser_cli import __version__
    from luser_cli.io.h5memory import h5_bytes, h5_in_memory

    with h5_in_memory() as f:
        f.create_dataset("reconstruction", data=data, compression="gzip", compression_opts=4)
        f.attrs["luser_version"] = np.bytes_(__version__.encode())
        f.attrs["created"] = np.bytes_(_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        for key, value in attrs.items():
            if value is not None:
                f.attrs[key] = np.bytes_(value.encode()) if isinstance(value, str) else value
        image = h5_bytes(f)
    atomic_write_bytes(path, image)


def write_reconstruction(
    path: str | Path,
    x: np.ndarray | Tensor,
    *,
    task: str,
    affine: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write a task's reconstruction ``x`` ``(N, C, H, W)`` (MRI: real/imag channels, written
    as the magnitude via :func:`luser_cli.physics.output_image`)."""
    import torch

    from luser_cli.physics import output_image

    t = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    shown = output_image(task, t.detach().cpu())
    return write_images(path, shown, affine=affine, attrs={"task": task, **(attrs or {})})
