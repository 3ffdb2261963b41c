"""Checkpoints: plain data written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values (no pickled classes): the model and
optimiser state, the step counter, the learning-rate scale after any rollbacks, the global RNG
state, the number of ``metrics.jsonl`` rows it covers, the resolved preset, task/model/size and
versions.

Crash safety: a checkpoint is written to a temporary file in the run folder, flushed to disk and
renamed into place (:func:`luser_cli.io.atomic.atomic_write`). Before the rename, the current
``checkpoint_last.pt`` is hard-linked (copied where links are not supported) to
``checkpoint_prev.pt`` by another atomic rename, so at every instant ``checkpoint_last.pt`` is a
complete file and ``checkpoint_prev.pt`` the one before it. A process killed in the middle leaves
at most a stray ``.checkpoint_*.tmp.pt`` file, which :func:`remove_stale_temporaries` deletes.
Should ``checkpoint_last.pt`` still be unreadable (a disk that lost data, a user's copy cut short),
:func:`load_resumable` reports it in one line and falls back to ``checkpoint_prev.pt``.

Hostile files: checkpoints are data, loaded only with ``torch.load(..., weights_only=True)``,
whose unpickler refuses every global that is not a plain tensor/container type, so a file that
would run code on load is refused before anything in it runs.
"""

from __future__ import annotations

import os
import pickle
import re
import secrets
import shutil
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from luser_cli import __version__
from luser_cli.errors import CheckpointError
from luser_cli.io.atomic import atomic_write

FORMAT = "luser-checkpoint"
VERSION = 1
LAST, PREV, BEST = "checkpoint_last.pt", "checkpoint_prev.pt", "checkpoint_best.pt"
_REQUIRED = {
    "format": str,
    "version": int,
    "task": str,
    "model": str,
    "image_size": int,
    "channels": int,
    "preset": dict,
    "model_state": dict,
    "step": int,
}
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def versions() -> dict[str, str]:
    return {"luser": __version__, "torch": str(torch.__version__)}


def _finite(state: dict[str, Any]) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in state.values()
        if isinstance(t, torch.Tensor) and torch.is_floating_point(t)
    )


def _keep_previous(path: Path) -> None:
    """Make ``checkpoint_prev.pt`` the current ``path`` without ever removing ``path``."""
    prev = path.with_name(PREV)
    tmp = path.with_name(f".{PREV}.{secrets.token_hex(4)}.tmp.pt")
    try:
        try:
            os.link(path, tmp)  # the same bytes under a second name: instant, no copy
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, prev)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: str | Path,
    payload: dict[str, Any],
    *,
    keep_previous: bool = False,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``payload`` atomically. Refuses non-finite weights (never saves NaN).

    With ``keep_previous`` the file being replaced becomes ``checkpoint_prev.pt``.
    ``before_commit(tmp)`` runs once the temporary file is complete, just before it is renamed
    into place (a test hook: the fault injector kills the process there).
    """
    path = Path(path)
    if not _finite(payload["model_state"]):
        raise CheckpointError(f"refusing to save {path.name}: the model weights are not finite")
    data = {
        "format": FORMAT,
        "version": VERSION,
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **payload,
    }
    with atomic_write(path) as tmp:
        torch.save(data, tmp)
        if before_commit is not None:
            before_commit(tmp)
        if keep_previous and path.exists():
            _keep_previous(path)
    return path


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete temporary checkpoint files left by a process killed while saving."""
    removed = []
    for p in Path(run_dir).glob(".checkpoint_*.tmp.pt"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _load_error(p: Path, e: BaseException) -> CheckpointError:
    """One line for an exception of ``torch.load(weights_only=True)``."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        found = _GLOBAL.search(text)
        if found or "Unsupported global" in text:
            what = found.group(1) if found else "a Python object"
            return CheckpointError(
                f"{p}: refused: it holds {what}, not plain tensors and numbers; loading it could "
                "run code, so it was not loaded (only weights_only checkpoints are accepted)"
            )
    return CheckpointError(
        f"{p}: corrupt, truncated or not a PyTorch checkpoint ({type(e).__name__})"
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate one checkpoint file; every failure is a one-line ``CheckpointError``.

    Only ``weights_only=True`` loading is used: code in a hostile file never runs.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file (a checkpoint cut short?)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": not one line
            data = torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise CheckpointError(f"{p}: too large to load") from None
    except Exception as e:  # whatever a hostile file provokes is one line
        raise _load_error(p, e) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a luser checkpoint (a PyTorch file of something else)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {data.get('version')} unsupported")
    for key, typ in _REQUIRED.items():
        value = data.get(key)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise CheckpointError(f"{p}: checkpoint field {key!r} missing or not {typ.__name__}")
    state = data["model_state"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{p}: model_state holds something other than named tensors")
    if not _finite(state):
        raise CheckpointError(f"{p}: the model weights are not finite (NaN/Inf)")
    if data["step"] < 0:
        raise CheckpointError(f"{p}: checkpoint field 'step' is negative")
    return data


def load_resumable(
    run_dir: str | Path, warn: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """The newest good checkpoint of a run (``last``, else ``prev``), or None if there is none.

    An unreadable ``checkpoint_last.pt`` is reported through ``warn`` (one line) and
    ``checkpoint_prev.pt`` is used. If checkpoint files exist but none can be loaded, that is an
    error (a run is never silently restarted over a user's files).
    """
    run = Path(run_dir)
    errors: list[CheckpointError] = []
    for name in (LAST, PREV):
        p = run / name
        if not p.exists():
            continue
        try:
            data = load_checkpoint(p)
        except CheckpointError as e:
            errors.append(e)
            continue
        for e in errors:
            warn(f"warning: {e}; using {name} (step {data['step']}) instead")
        return data
    if errors:
        raise CheckpointError(f"{errors[0]}; no usable checkpoint to resume from in {run}")
    return None


def stored_preset(run_dir: str | Path) -> dict[str, Any] | None:
    """The resolved preset kept in a run folder's newest readable checkpoint (None if none).

    Silent: :func:`load_resumable` reports unreadable files when the run is actually resumed.
    """
    for name in (LAST, PREV):
        p = Path(run_dir) / name
        if p.is_file():
            try:
                return load_checkpoint(p)["preset"]
            except CheckpointError:
                continue
    return None


def check_compatible(
    ckpt: dict[str, Any],
    *,
    task: str,
    image_size: int | None = None,
    channels: int | None = None,
    model: str | None = None,
    source: str = "checkpoint",
) -> None:
    """Refuse a checkpoint trained for another task, model, image size or channel count."""
    if ckpt["task"] != task:
        raise CheckpointError(f"{source} was trained for task {ckpt['task']!r}, not {task!r}")
    if model is not None and ckpt["model"] != model:
        raise CheckpointError(f"{source} holds a {ckpt['model']} model, not {model}")
    if channels is not None and ckpt["channels"] != channels:
        raise CheckpointError(
            f"{source} expects {ckpt['channels']}-channel images, the data have {channels}"
        )
    if image_size is not None and ckpt["image_size"] != image_size:
        raise CheckpointError(
            f"{source} was trained on {ckpt['image_size']}x{ckpt['image_size']} images, "
            f"not {image_size}x{image_size}"
        )
