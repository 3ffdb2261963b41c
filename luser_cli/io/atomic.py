"""Atomic file writes: a failure never leaves a partial (or any) output file behind.

Usage::

    with atomic_write("out/recon.nii.gz") as tmp:
        nibabel.save(img, tmp)          # any writer that takes a path

The writer writes to a temporary file in the destination's folder whose name ends with the same
suffixes (so libraries that pick a format by extension still work); on success the temporary file
is flushed to disk (``fsync``) and renamed over the destination with :func:`os.replace` (atomic on
POSIX and Windows); on any exception it is deleted and the exception propagates. The destination
is therefore either the complete new file or unchanged.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from luser_cli.errors import InputError


def _suffixes(name: str) -> str:
    """The extension to keep on the temporary file (``.nii.gz``, ``.h5``, ...)."""
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return name[-len(double) :]
    return Path(name).suffix


def check_writable(path: str | Path, *, make_parents: bool = False) -> Path:
    """``path`` as a :class:`Path` if a file can be written there (its folder exists, it is not a
    folder itself); raises :class:`InputError` otherwise. Creates the parents if asked."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: output path is a folder")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        if make_parents:
            parent.mkdir(parents=True, exist_ok=True)
        else:
            raise InputError(f"{p}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{p}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{p}: output folder {parent} is not writable")
    return p


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, *, make_parents: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path`` atomically.

    The temporary file does not exist when yielded (writers such as ``np.save`` or ``h5py`` may
    create it); if the block raises, whatever was written there is removed. The final file gets
    the usual permissions (``0o666`` minus the umask).
    """
    dest = check_writable(path, make_parents=make_parents)
    parent = dest.parent if str(dest.parent) else Path(".")
    token = secrets.token_hex(4)
    tmp = parent / f".{dest.name}.{token}.tmp{_suffixes(dest.name)}"
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_write: nothing was written to the temporary file {tmp}")
        _fsync_file(tmp)
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
        _fsync_dir(parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
