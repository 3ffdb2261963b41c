"""Read PNG / JPEG / TIFF / ``.npy`` images as float32 ``(C, H, W)``; write 8-bit PNG.

Intensity convention (no per-image rescaling, ever): values are mapped to [0, 1] by the range of
the stored dtype: ``bool`` -> {0, 1}; ``uint8`` / 255; ``uint16`` / 65535; ``uint32`` / (2^32 - 1);
floating-point values are kept as they are (cast to float32). Signed integer data are refused
(their range has no agreed meaning for images; convert to uint8/uint16 or to float first).

Decoders: Pillow for PNG/JPEG (16-bit gray PNG is read as uint16; 16-bit RGB PNG is reduced to
8 bits by Pillow), ``tifffile`` for TIFF (8/16-bit, float, gray or RGB, single page).

``.npy`` layouts (read with ``allow_pickle=False``, header checked before the data are read):

- ``(H, W)``: one gray image;
- ``(C, H, W)`` with C in 1..4: one image, channels first;
- ``(H, W, C)`` with C in 1..4 (and the first axis not in 1..4): one image, channels last;
- ``(Z, H, W)`` otherwise (Z > 4 and last axis > 4): a volume of Z gray slices;
- ``(N, C, H, W)`` with C in 1..4: N images.

A 3-slice volume is therefore read as one RGB image: save such volumes as ``(N, 1, H, W)``.
NIfTI volumes go through :mod:`luser_cli.io.nifti` (:func:`read_image_stack` dispatches).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luser_cli.errors import InputError
from luser_cli.io.atomic import atomic_write_bytes
from luser_cli.io.validate import (
    check_finite,
    check_image_dims,
    check_stack_dims,
    require_file,
    short_error,
)

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = PIL_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES


@dataclass
class ImageStack:
    """Images read from one input file.

    ``images``: float32 ``(N, C, H, W)`` in [0, 1] by dtype range (floats as stored);
    ``affine``: the NIfTI voxel-to-world matrix ``(4, 4)`` for volumes read from NIfTI, else None;
    ``kind``: ``"image"``, ``"npy"`` or ``"nifti"``; ``path``: the file read.
    """

    images: np.ndarray
    affine: np.ndarray | None
    kind: str
    path: Path

    @property
    def is_volume(self) -> bool:
        return self.images.shape[0] > 1


def suffix_of(path: str | Path) -> str:
    """Lower-case extension, treating ``.nii.gz`` as one."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def to_unit_range(array: np.ndarray, what: str) -> np.ndarray:
    """Map stored values to float32 by the dtype's range (see the module docstring)."""
    a = np.asarray(array)
    kind, dt = a.dtype.kind, a.dtype
    if kind == "b":
        return a.astype(np.float32)
    if kind == "u":
        if dt.itemsize > 4:
            raise InputError(f"{what}: unsupported dtype {dt} (use uint8, uint16 or float)")
        return (a.astype(np.float64) / float(np.iinfo(dt).max)).astype(np.float32)
    if kind == "i":
        raise InputError(
            f"{what}: signed integer data ({dt}) have no defined intensity range; "
            "save as uint8, uint16 or float"
        )
    if kind == "f":
        check_finite(a, what)
        out = a.astype(np.float32)
        check_finite(out, what + " (as float32)")
        return out
    raise InputError(f"{what}: unsupported dtype {dt} (expected uint8, uint16, bool or float)")


# -- PNG / JPEG -----------------------------------------------------------------------------------
@contextmanager
def pil_errors(what: str) -> Iterator[None]:
    """Pillow's failures while opening or decoding ``what`` as one-line
    :class:`~luser_cli.errors.InputError` s (its warnings silenced); InputErrors pass through."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(f"{what}: not a readable PNG/JPEG image") from None
    except Image.DecompressionBombError:
        raise InputError(f"{what}: image is too large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{what}: corrupt or truncated image ({short_error(e)})") from None


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    what = str(path)
    with pil_errors(what), Image.open(path) as im:
        w, h = im.size
        check_image_dims(h, w, what)  # from the header, before decoding pixels
        if getattr(im, "n_frames", 1) > 1:
            raise InputError(f"{what}: animated/multi-frame images are not supported")
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        elif mode == "I":  # 32-bit signed ints: only as 16-bit unsigned data
            arr = np.asarray(im)
            if arr.min() < 0 or arr.max() > 65535:
                raise InputError(f"{what}: 32-bit integer image data are not supported")
            arr = arr.astype(np.uint16)
            return _hwc_to_chw(to_unit_range(arr, what))
        im.load()
        arr = np.asarray(im)
    if arr.dtype.kind == "u" and arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return _hwc_to_chw(to_unit_range(arr, what))


# -- TIFF -----------------------------------------------------------------------------------------
def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    what = str(path)
    try:
        with tifffile.TiffFile(path) as tf:
            if len(tf.pages) == 0:
                raise InputError(f"{what}: TIFF file has no images")
            if len(tf.pages) > 1:
                raise InputError(
                    f"{what}: multi-page TIFF is not supported (use NIfTI or .npy for volumes)"
                )
            page = tf.pages[0]
            shape, axes = tuple(page.shape), page.axes
            if axes not in ("YX", "YXS", "SYX"):
                raise InputError(f"{what}: unsupported TIFF layout {axes} {shape}")
            h, w = (shape[1], shape[2]) if axes == "SYX" else (shape[0], shape[1])
            check_image_dims(h, w, what)
            arr = page.asarray()
    except InputError:
        raise
    except tifffile.TiffFileError as e:
        raise InputError(f"{what}: not a readable TIFF image ({short_error(e)})") from None
    except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, RuntimeError) as e:
        raise InputError(f"{what}: corrupt or truncated TIFF ({short_error(e)})") from None
    arr = to_unit_range(arr, what)
    if axes == "YX":
        return arr[None]
    if axes == "SYX":
        return _check_channels(arr, what)
    return _hwc_to_chw(arr)


# -- .npy -----------------------------------------------------------------------------------------
def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a ``.npy`` file from its header, after refusing
    pickled (object) arrays, zero-size or absurdly large shapes and truncated files."""
    p = require_file(path)
    what = str(p)
    fmt = np.lib.format
    try:
        with p.open("rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                shape, _fortran, dtype = fmt._read_array_header(f, version)  # type: ignore[attr-defined]
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise InputError(f"{what}: not a valid .npy file ({short_error(e)})") from None
    if dtype.hasobject:
        raise InputError(f"{what}: .npy holds Python objects (pickle); refusing to load it")
    check_stack_dims(shape, what)
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if p.stat().st_size < need:
        raise InputError(f"{what}: truncated .npy file ({p.stat().st_size} of {need} bytes)")
    return tuple(int(n) for n in shape), dtype, offset


def read_npy(path: str | Path) -> np.ndarray:
    """The raw array of a ``.npy`` file, after checking its header (:func:`npy_header`): pickled
    arrays, absurd shapes and truncated files are refused before the data are read."""
    p = require_file(path)
    what = str(p)
    npy_header(p)
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{what}: cannot read .npy data ({short_error(e)})") from None
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def npy_to_stack(arr: np.ndarray, what: str) -> np.ndarray:
    """Arrange a ``.npy`` array as ``(N, C, H, W)`` by the layout rules in the module docstring."""
    s = arr.shape
    if arr.ndim == 2:
        out = arr[None, None]
    elif arr.ndim == 3:
        if 1 <= s[0] <= 4:
            out = arr[None]
        elif 1 <= s[2] <= 4:
            out = np.moveaxis(arr, -1, 0)[None]
        else:
            out = arr[:, None]
    elif arr.ndim == 4:
        if not 1 <= s[1] <= 4:
            raise InputError(f"{what}: 4D arrays must be (N, C, H, W) with C in 1..4, got {s}")
        out = arr
    else:
        raise InputError(
            f"{what}: expected a 2D, 3D or 4D array ((H, W), (C, H, W), (H, W, C), (Z, H, W) or "
            f"(N, C, H, W)), got shape {s}"
        )
    check_image_dims(out.shape[-2], out.shape[-1], what)
    return out


# -- public readers -------------------------------------------------------------------------------
def read_image(path: str | Path) -> np.ndarray:
    """One image as float32 ``(C, H, W)`` (C = 1, 2, 3 or 4), values by dtype range.

    Accepts PNG, JPEG, TIFF and ``.npy`` holding one image; raises :class:`InputError` for a
    missing, unreadable, corrupt, zero-size, too large or non-finite image.
    """
    p = require_file(path)
    suffix = suffix_of(p)
    if suffix in PIL_SUFFIXES:
        return _read_pil(p)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(p)
    if suffix in NPY_SUFFIXES:
        stack = npy_to_stack(read_npy(p), str(p))
        if stack.shape[0] != 1:
            raise InputError(f"{p}: holds {stack.shape[0]} images, expected one")
        return to_unit_range(stack[0], str(p))
    raise InputError(
        f"{p}: unsupported image format {suffix or '(no extension)'}; "
        f"use one of {', '.join(IMAGE_SUFFIXES + NIFTI_SUFFIXES)}"
    )


def read_image_stack(path: str | Path) -> ImageStack:
    """Images of any supported input file as float32 ``(N, C, H, W)``.

    PNG/JPEG/TIFF give N = 1; ``.npy`` follows the layout rules above; NIfTI gives one gray
    image per slice ``data[:, :, k]`` with the file's affine (see :mod:`luser_cli.io.nifti`).
    """
    p = require_file(path)
    suffix = suffix_of(p)
    if suffix in NIFTI_SUFFIXES:
        from luser_cli.io.nifti import read_nifti

        vol = read_nifti(p)
        return ImageStack(vol.slices[:, None], vol.affine, "nifti", p)
    if suffix in NPY_SUFFIXES:
        stack = npy_to_stack(read_npy(p), str(p))
        return ImageStack(to_unit_range(stack, str(p)), None, "npy", p)
    return ImageStack(read_image(p)[None], None, "image", p)


# -- PNG writer -----------------------------------------------------------------------------------
def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """Write 8-bit ``pixels`` ``(H, W)`` (gray) or ``(H, W, 3)`` (RGB) as PNG, atomically."""
    from PIL import Image

    a = np.asarray(pixels)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"write_png needs uint8 (H, W) or (H, W, 3), got {a.dtype} {a.shape}")
    buffer = io.BytesIO()  # encoded in memory: a full disk is then a plain write's OSError
    Image.fromarray(np.ascontiguousarray(a)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getbuffer())


# -- helpers --------------------------------------------------------------------------------------
def _hwc_to_chw(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        return _check_channels(np.moveaxis(arr, -1, 0), "image")
    raise InputError(f"unexpected image array of shape {arr.shape}")


def _check_channels(chw: np.ndarray, what: str) -> np.ndarray:
    if not 1 <= chw.shape[0] <= 4:
        raise InputError(f"{what}: images need 1 to 4 channels, got {chw.shape[0]}")
    return np.ascontiguousarray(chw, dtype=np.float32)
