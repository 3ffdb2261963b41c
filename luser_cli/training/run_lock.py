"""One ``luser train`` per run folder: an exclusive lock, and the check of what a folder holds.

The lock is ``fcntl.flock`` on ``RUN/.luser-run.lock`` (which records the holder's PID). The
operating system releases it when the process ends, however it ends, so a run killed with
SIGKILL leaves no stale lock; a second ``luser train`` into the same folder is refused in one
line naming the holder. Where ``fcntl`` does not exist (Windows) no lock is taken.

:func:`check_run_folder` decides, before anything is written, whether a folder may become (or
go on being) a run folder: a new run needs an empty folder or a luser run folder that holds no
checkpoint yet; files luser did not write are never overwritten or deleted.
"""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

from luser_cli.errors import ConfigError, OutputError
from luser_cli.run_files import CHECKPOINTS, LOCK, OWNED, is_luser_temporary

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """The exclusive lock of a run folder, held until :meth:`release` or the process ends."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock (the folder must exist); one-line :class:`OutputError` if held."""
        if fcntl is None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(
                f"{self.path.parent}: cannot write the run folder ({e.strerror or e})"
            ) from None
        try:
            _flock(fd)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise OutputError(
                f"{self.path.parent} is in use by another luser train ({who}); wait for it to "
                "finish or choose another --out"
            ) from None
        with contextlib.suppress(OSError):  # the PID is for the message above, nothing else
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _flock(fd: int) -> None:
    """Exclusive, non-blocking. A lock this very process still holds through a trainer that
    failed while being built is let go first (garbage collection closes its descriptor)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        if _read_pid(fd) != os.getpid():
            raise
        gc.collect()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    return None


def foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that a luser run did not write (sorted)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name not in OWNED and not is_luser_temporary(p.name)
    )


def check_run_folder(folder: str | Path, *, resume: bool) -> None:
    """Refuse, before anything is written, a ``--out`` that is a file or a folder holding
    files luser did not write; without ``resume``, also one that already holds a run."""
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"--out {d}: is a file, not a folder; choose a folder for the run")
    if not d.exists():
        parent = next((p for p in d.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"--out {d}: {parent} is a file, not a folder")
        return
    entries = list(d.iterdir())
    if not entries:
        return
    if any((d / name).exists() for name in CHECKPOINTS):
        if not resume:
            raise ConfigError(
                f"{d} already holds a run; pass --resume to continue it or choose another --out"
            )
        return
    others = foreign_files(d)
    luser_folder = (d / LOCK).exists()
    if others or not luser_folder:
        shown = ", ".join((others or sorted(p.name for p in entries))[:4])
        more = "" if len(entries) <= 4 else ", ..."
        raise ConfigError(
            f"{d} is not empty and is not a luser run folder (it holds {shown}{more}); "
            "choose an empty or new folder for --out (--resume continues only a luser run)"
        )
