"""Check an input file from its header alone, without decoding its pixels.

Used on every file of a ``--data`` folder before training starts, so that a file luser cannot
read (an RGB24 NIfTI, a truncated volume, a 12000 x 12000 PNG) is reported in one line up front
instead of failing mid-training after a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from luser_cli.errors import InputError
from luser_cli.io.validate import check_image_dims, require_file, short_error


def check_input_header(path: str | Path) -> None:
    """Raise a one-line :class:`InputError` if ``path``'s header shows it cannot be read:
    unreadable, an unsupported data type, or over the size caps of
    :mod:`luser_cli.io.validate`. Formats without a cheap header check pass."""
    from luser_cli.io.images import NPY_SUFFIXES, PIL_SUFFIXES, TIFF_SUFFIXES, suffix_of

    p = require_file(path)
    suffix = suffix_of(p)
    if suffix in (".nii", ".nii.gz"):
        from luser_cli.io.nifti import open_nifti_header

        open_nifti_header(p)
    elif suffix in PIL_SUFFIXES:
        _check_pil(p)
    elif suffix in TIFF_SUFFIXES:
        _check_tiff(p)
    elif suffix in NPY_SUFFIXES:
        from luser_cli.io.images import npy_header

        npy_header(p)


def _check_pil(path: Path) -> None:
    from PIL import Image

    from luser_cli.io.images import pil_errors

    with pil_errors(str(path)), Image.open(path) as im:
        w, h = im.size
    check_image_dims(h, w, str(path))


def _check_tiff(path: Path) -> None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            if len(tf.pages) != 1:
                raise InputError(f"{path}: TIFF must hold exactly one image")
            shape = tuple(tf.pages[0].shape)
    except InputError:
        raise
    except Exception as e:  # tifffile raises assorted errors for damaged files
        raise InputError(f"{path}: not a readable TIFF image ({short_error(e)})") from None
    if len(shape) >= 2:
        h, w = (shape[1], shape[2]) if len(shape) == 3 and shape[0] <= 4 else shape[:2]
        check_image_dims(int(h), int(w), str(path))
