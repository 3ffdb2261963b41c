"""NIfTI volumes (nibabel): read as float32 slices, write with a given affine.

Slicing convention: the **last voxel axis** indexes slices. Slice ``k`` is ``data[:, :, k]`` as
stored, with rows = the first voxel axis (i) and columns = the second (j); no reorientation or
transposition is applied, so writing an ``(H, W, N)`` volume with the input's affine puts every
voxel back where it came from (a PNG preview shows the voxel grid as stored, which may look
rotated compared with a radiological viewer).

Values are the scaled data (``get_fdata``: nibabel applies ``scl_slope`` / ``scl_inter``).
A 2D image is one slice; a 4D volume is accepted only if its 4th dimension is 1.
"""

from __future__ import annotations

import gzip
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from luser_cli.errors import InputError
from luser_cli.io.atomic import atomic_write_bytes
from luser_cli.io.validate import check_finite, check_stack_dims, require_file, short_error

#: Bytes a ``.nii.gz`` may inflate to beyond what its header declares (padding, extensions).
TRAILING_SLACK = 1 << 20


@dataclass
class NiftiVolume:
    """``slices``: float32 ``(Z, H, W)``; ``affine``: float64 ``(4, 4)`` voxel -> world (mm);
    ``zooms``: voxel sizes from the header (mm, and seconds for a 4th axis)."""

    slices: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, ...]


def open_nifti_header(path: str | Path) -> tuple[Any, tuple[int, int, int]]:
    """The nibabel image of a NIfTI file (header only, no voxel data read) and its volume shape
    ``(H, W, Z)``, after every check its header allows: readable, 2D/3D, sizes under the caps
    (:func:`~luser_cli.io.validate.check_stack_dims`), a real gray-value data type (RGB24 and
    complex refused) and, uncompressed, a file as long as the header declares."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    p = require_file(path)
    what = str(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = nib.load(p)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error, TypeError) as e:
        raise InputError(f"{what}: not a readable NIfTI file ({short_error(e)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{what}: not a NIfTI image ({type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise InputError(
            f"{what}: expected a 2D or 3D volume (4D only with one volume), got shape {img.shape}"
        )
    check_stack_dims((shape[2], shape[0], shape[1]), what)
    dtype = np.dtype(img.get_data_dtype())
    if dtype.kind == "c":
        raise InputError(f"{what}: complex-valued NIfTI data are not supported")
    if dtype.kind not in "biuf":  # RGB24 / RGBA32 are structured dtypes
        raise InputError(
            f"{what}: NIfTI data type {_dtype_name(dtype)} is not supported; luser reads one "
            "gray value per voxel (convert RGB volumes to gray first)"
        )
    need = _declared_bytes(img)
    if not str(p).lower().endswith(".gz") and p.stat().st_size < need:
        raise InputError(
            f"{what}: truncated NIfTI file ({p.stat().st_size} bytes, its header declares {need})"
        )
    return img, (shape[0], shape[1], shape[2])


def read_nifti(path: str | Path) -> NiftiVolume:
    """Read a NIfTI-1/2 file as ``Z`` slices ``data[:, :, k]`` (see the module docstring)."""
    p = require_file(path)
    what = str(p)
    img, shape = open_nifti_header(p)
    img = _bounded_image(p, img, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = img.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise InputError(f"{what}: corrupt or truncated NIfTI data ({short_error(e)})") from None
    data = data.reshape(shape)
    check_finite(data, what)
    slices = np.ascontiguousarray(np.moveaxis(data, 2, 0), dtype=np.float32)
    affine = np.asarray(img.affine, dtype=np.float64)
    check_finite(affine, what + " affine")
    zooms = tuple(float(z) for z in img.header.get_zooms())
    return NiftiVolume(slices, affine, zooms)


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.names == ("R", "G", "B"):
        return "RGB24"
    if dtype.names == ("R", "G", "B", "A"):
        return "RGBA32"
    return str(dtype)


def _declared_bytes(img: Any) -> int:
    """Bytes of the file up to the end of the voxel data its header declares."""
    offset = int(getattr(img.dataobj, "offset", 0))
    voxels = math.prod(int(s) for s in img.shape)
    return offset + voxels * np.dtype(img.get_data_dtype()).itemsize


def _bounded_image(path: Path, img, what: str):  # -> nibabel image with its data in memory
    """``img`` (header already checked against the size caps) with exactly the bytes its header
    declares: an uncompressed file shorter than that is truncated; a ``.nii.gz`` is inflated by a
    bounded reader that stops :data:`TRAILING_SLACK` bytes past the declared size, so a small
    file that inflates to gigabytes is refused without allocating them."""
    need = _declared_bytes(img)
    if not str(path).lower().endswith(".gz"):
        return img  # its length was checked with the header
    raw = bytearray()
    limit = need + TRAILING_SLACK
    try:
        with gzip.open(path, "rb") as f:
            while len(raw) <= limit:
                chunk = f.read(min(1 << 22, limit + 1 - len(raw)))
                if not chunk:
                    break
                raw += chunk
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{what}: corrupt or truncated NIfTI data ({short_error(e)})") from None
    if len(raw) > limit:
        raise InputError(
            f"{what}: decompresses to more than its header declares ({need} bytes); refused"
        )
    if len(raw) < need:
        raise InputError(
            f"{what}: truncated NIfTI data ({len(raw)} bytes inflated, its header declares {need})"
        )
    try:
        return type(img).from_bytes(bytes(raw[:need]))
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{what}: not a readable NIfTI file ({short_error(e)})") from None


def write_nifti(path: str | Path, volume: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write float32 ``volume`` (``(H, W, N)``, or any 2D-4D array as stored) atomically.

    ``affine`` defaults to the identity. Values are stored as float32 without scaling, so
    :func:`read_nifti` returns them exactly; the affine is stored in the header's sform and
    qform (float32 in the file format).
    """
    import nibabel as nib

    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be (4, 4), got {aff.shape}")
    data = np.asarray(volume, dtype=np.float32)
    img = nib.Nifti1Image(data, aff)
    img.header.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    raw = img.to_bytes()  # built in memory: a full disk is then a plain write's OSError
    if str(path).lower().endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6)
    atomic_write_bytes(path, raw)


def crop_resize_affine(affine: np.ndarray, top: int, left: int, crop: int, size: int) -> np.ndarray:
    """Affine of slices centre-cropped at ``(top, left)`` to ``crop x crop`` then resized to
    ``size x size``: new voxel ``(i', j', k)`` sits at old voxel
    ``(top + (i' + 0.5) crop / size - 0.5, left + (j' + 0.5) crop / size - 0.5, k)``."""
    s = crop / size
    m = np.eye(4)
    m[0, 0] = m[1, 1] = s
    m[0, 3] = top + 0.5 * s - 0.5
    m[1, 3] = left + 0.5 * s - 0.5
    return np.asarray(affine, dtype=np.float64) @ m
