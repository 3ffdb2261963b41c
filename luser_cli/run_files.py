"""The files luser owns in a run folder, and the check that keeps user outputs off them.

A run folder (``luser train --out``) holds the names in :data:`OWNED`. Outputs of ``luser eval``,
``reconstruct`` and ``simulate`` must never replace one of them, nor the command's own input:
:func:`check_user_output` refuses both in one line before anything is computed. This module
imports neither torch nor h5py, so every command can call it first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from luser_cli.errors import OutputError
from luser_cli.io.atomic import check_writable

LAST, PREV, BEST = "checkpoint_last.pt", "checkpoint_prev.pt", "checkpoint_best.pt"
CHECKPOINTS: tuple[str, ...] = (LAST, PREV, BEST)
#: The lock file ``luser train`` holds while it writes the folder (it stays afterwards and marks
#: the folder as luser's).
LOCK = ".luser-run.lock"
OWNED: tuple[str, ...] = (
    *CHECKPOINTS,
    "metrics.jsonl",
    "run.json",
    "preset.toml",
    "training_curve.png",
    "bench_cell.json",  # luser bench's record of the cell trained in this folder
    LOCK,
)


def is_run_folder(folder: str | Path) -> bool:
    """True if ``folder`` holds a luser checkpoint or a run lock file."""
    d = Path(folder)
    return any((d / name).is_file() for name in (*CHECKPOINTS, LOCK))


def is_luser_temporary(name: str) -> bool:
    """A temporary file a luser writer leaves when killed (``.NAME.TOKEN.tmpSUFFIX``)."""
    return name.startswith(".") and ".tmp" in name


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_user_output(path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """``path`` if a command may write its output there: a writable place that is not one of
    ``inputs`` and not a file luser owns in a run folder. Raises a one-line
    :class:`~luser_cli.errors.OutputError` (or ``InputError`` for a missing folder)."""
    out = check_writable(path)
    for src in inputs:
        if _same_file(out, Path(src)):
            raise OutputError(f"{path}: output would overwrite the input file; choose another name")
    parent = out.parent if str(out.parent) else Path(".")
    if out.name in OWNED and is_run_folder(parent):
        raise OutputError(
            f"{path}: refusing to write there: {out.name} belongs to the luser run in {parent}; "
            "choose another file name"
        )
    return out
