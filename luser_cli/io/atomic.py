"""Atomic file writes: a failure never leaves a partial (or any) output file behind.

Usage::

    with atomic_write("out/recon.nii.gz") as tmp:
        nibabel.save(img, tmp)          # any writer that takes a path

The writer writes to a temporary file in the destination's folder whose name ends with the same
suffixes (so libraries that pick a format by extension still work); on success the temporary file
is flushed to disk (``fsync``) and renamed over the destination with :func:`os.replace` (atomic on
POSIX and Windows); on any exception it is deleted and the exception propagates. The destination
is therefore either the complete new file or unchanged.

Writers whose libraries hide or mishandle the operating system's error (``torch.save``, h5py,
Pillow, nibabel, ``np.save``) build the file in memory and hand its bytes to
:func:`atomic_write_bytes`; text and matplotlib figures are written through Python file objects.
Either way a full disk, a quota or a file-size limit (``ENOSPC``, ``EDQUOT``, ``EFBIG``) is an
``OSError`` that :func:`atomic_write` turns into one :class:`~luser_cli.errors.OutputError`
line, after removing the temporary file. Temporary names are short (at most
:data:`TMP_NAME_KEEP` characters of the destination's name), so a destination name close to the
file system's 255-byte limit still gets a valid temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from luser_cli.errors import InputError, OutputError

#: Characters of the destination's name kept in its temporary name (and of its extension).
TMP_NAME_KEEP = 40
_SUFFIX_KEEP = 12

#: ``errno`` values that mean "the file system will not take more bytes".
DISK_FULL_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EFBIG: "file too large for the file system or the process's file-size limit",
    **({errno.EDQUOT: "disk quota exceeded"} if hasattr(errno, "EDQUOT") else {}),
}


def _suffixes(name: str) -> str:
    """The extension to keep on the temporary file (``.nii.gz``, ``.h5``, ...)."""
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return name[-len(double) :]
    suffix = Path(name).suffix
    return suffix if len(suffix) <= _SUFFIX_KEEP else ""


def temporary_name(name: str, token: str) -> str:
    """The temporary file's name for destination ``name``: ``.NAME.TOKEN.tmpSUFFIX`` with NAME
    cut to :data:`TMP_NAME_KEEP` characters (always well under 255 bytes)."""
    return f".{name[:TMP_NAME_KEEP]}.{token}.tmp{_suffixes(name)}"


def disk_full_reason(e: BaseException) -> str | None:
    """Why the file system refused more bytes (``ENOSPC``/``EFBIG``/``EDQUOT``), else None."""
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
        return DISK_FULL_ERRNOS[e.errno]
    return None


def disk_full_error(path: str | Path, e: OSError) -> OutputError:
    """One line for a write that a full disk or a size limit stopped."""
    reason = disk_full_reason(e) or (e.strerror or type(e).__name__)
    return OutputError(
        f"{path}: cannot write: {reason}; nothing was written there and any previous file is kept"
    )


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
    tmp = parent / temporary_name(dest.name, secrets.token_hex(4))
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
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if disk_full_reason(e) is not None:
            raise disk_full_error(dest, e) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview, **kw) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); a full disk or a size
    limit is one :class:`OutputError` line, the temporary file removed."""
    with atomic_write(path, **kw) as tmp, open(tmp, "xb") as f:
        f.write(data)
        f.flush()
    return Path(path)
