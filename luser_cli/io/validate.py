"""Shared checks for input files and arrays: existence, sizes, dtypes, finite values.

Every check raises :class:`~luser_cli.errors.InputError` with one line naming the file (or array)
and the problem. Size checks work on *shapes* (read from a file's header or an HDF5 dataset's
metadata), so an absurd dimension is refused before any pixel data are read or allocated.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from luser_cli.errors import InputError, LuserError

#: Largest accepted image side, pixels (a 16384 x 16384 image is 1 GiB in float32).
MAX_SIDE = 16384
#: Largest accepted number of pixels in one 2D image (64 megapixels: a 12000 x 12000 PNG is
#: refused from its header, before decoding).
MAX_PIXELS = 64_000_000
#: Largest accepted number of elements in a whole array read from a file (1 GiB as float32;
#: a NIfTI header claiming 1000^3 voxels is refused before any data are read).
MAX_ELEMENTS = 268_435_456
#: Largest accepted number of slices / samples in one file.
MAX_SLICES = 100_000


def display_name(path: str | Path) -> str:
    """How errors name a file: the path as the user gave it."""
    return str(path)


def require_file(path: str | Path) -> Path:
    """``path`` as a :class:`Path` if it is an existing, readable regular file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{display_name(p)}: file not found")
    if p.is_dir():
        raise InputError(f"{display_name(p)}: is a folder, not a file")
    if not p.is_file():
        raise InputError(f"{display_name(p)}: not a regular file")
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise InputError(f"{display_name(p)}: cannot be read ({e.strerror or e})") from None
    if p.stat().st_size == 0:
        raise InputError(f"{display_name(p)}: file is empty (0 bytes)")
    return p


def check_image_dims(height: int, width: int, what: str) -> None:
    """Refuse zero-size or absurdly large 2D images (before decoding them)."""
    if height <= 0 or width <= 0:
        raise InputError(f"{what}: zero-size image ({height}x{width})")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise InputError(
            f"{what}: image of {height}x{width} pixels is too large (at most {MAX_SIDE} per side)"
        )
    if height * width > MAX_PIXELS:
        raise InputError(
            f"{what}: image of {height}x{width} pixels is too large "
            f"(at most {MAX_PIXELS / 1e6:.0f} megapixels)"
        )


def check_shape_size(shape: Sequence[int], what: str, *, max_elements: int = MAX_ELEMENTS) -> None:
    """Refuse an array shape with a zero or negative dimension or too many elements."""
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise InputError(f"{what}: zero-size array of shape {shape}")
    n = math.prod(shape)
    if n > max_elements:
        raise InputError(
            f"{what}: array of shape {shape} is too large ({n:.3g} elements, at most "
            f"{max_elements:.3g})"
        )


def check_stack_dims(shape: Sequence[int], what: str) -> None:
    """Check an ``(N, ..., H, W)`` stack: sizes of each image, slice count and total elements."""
    shape = tuple(int(s) for s in shape)
    check_shape_size(shape, what)
    if len(shape) >= 2:
        check_image_dims(shape[-2], shape[-1], what)
    if len(shape) >= 3 and shape[0] > MAX_SLICES:
        raise InputError(f"{what}: {shape[0]} slices is too many (at most {MAX_SLICES})")


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite values, saying how many there are."""
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return
    ok = np.isfinite(a)
    if not ok.all():
        bad = a.size - int(ok.sum())
        kinds = []
        if np.isnan(a).any():
            kinds.append("NaN")
        if np.isinf(a).any():
            kinds.append("Inf")
        raise InputError(f"{what}: contains {bad} non-finite value(s) ({'/'.join(kinds)})")


def check_ndim(shape: Sequence[int], ndims: int | Sequence[int], what: str) -> None:
    """Refuse an array whose number of dimensions is not one of ``ndims``."""
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if len(shape) not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise InputError(f"{what}: expected a {want} array, got shape {tuple(shape)}")


def check_real_float(dtype: np.dtype, what: str) -> None:
    """Refuse anything but a real floating-point dtype."""
    if np.dtype(dtype).kind != "f":
        raise InputError(f"{what}: expected real floating-point data, got dtype {np.dtype(dtype)}")


def as_finite_float32(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as float32, refusing non-finite values (also those created by the cast)."""
    a = np.asarray(array)
    check_finite(a, what)
    out = a.astype(np.float32, copy=False)
    if a.dtype != np.float32:
        check_finite(out, what + " (as float32)")
    return out


def open_hdf5(path: str | Path):  # -> h5py.File
    """Open an HDF5 file read-only, turning h5py's ``OSError`` for a missing, non-HDF5,
    truncated or corrupt file into a one-line :class:`InputError`."""
    import h5py

    p = require_file(path)
    try:
        return h5py.File(p, "r")
    except OSError as e:
        text = str(e).lower()
        if "signature" in text:
            why = "not an HDF5 file"
        elif "truncated" in text or "eof" in text:
            why = "truncated HDF5 file"
        else:
            why = f"corrupt or unreadable HDF5 file ({short_error(e)})"
        raise InputError(f"{p}: {why}") from None
    except Exception as e:  # h5py raises assorted errors for damaged superblocks
        raise InputError(f"{p}: corrupt HDF5 file ({short_error(e)})") from None


def read_dataset(ds, selection, what: str) -> np.ndarray:  # ds: h5py.Dataset
    """``ds[selection]`` as a NumPy array; a damaged chunk becomes an :class:`InputError`."""
    try:
        return np.asarray(ds[selection])
    except InputError:
        raise
    except Exception as e:  # OSError (bad chunk / truncated), TypeError (odd dtype), ...
        raise InputError(f"{what}: cannot read data ({short_error(e)})") from None


def short_error(e: BaseException) -> str:
    """A library exception as a short single line."""
    text = " ".join(str(e).split())
    return (text[:120] + "...") if len(text) > 120 else (text or type(e).__name__)


@contextlib.contextmanager
def hdf5_errors(path: str | Path) -> Iterator[None]:
    """Turn what h5py raises for damaged object headers, datatypes or attributes (``OSError``,
    ``KeyError``, ``RuntimeError``, ``ValueError``, ``TypeError``) inside the block into one
    :class:`InputError` line; luser's own errors pass through unchanged."""
    try:
        yield
    except LuserError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
        raise InputError(f"{path}: corrupt HDF5 file ({short_error(e)})") from None
