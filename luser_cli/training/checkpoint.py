"""Checkpoints: plain data written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values (no pickled classes): the model and
optimiser state, the step counter, the learning-rate scale after any rollbacks, the global RNG
state, the number of ``metrics.jsonl`` rows it covers, the resolved preset, task/model/size and
versions.

Crash safety: a checkpoint is serialised in memory, written to a temporary file in the run
folder, flushed to disk and renamed into place (:func:`luser_cli.io.atomic.atomic_write_bytes`).
Before the rename, the current ``checkpoint_last.pt`` is *copied* (never hard-linked) to
``checkpoint_prev.pt`` by another atomic write, so at every instant ``checkpoint_last.pt`` is a
complete file, ``checkpoint_prev.pt`` the one before it, and the two are never the same file (a
hard link would make a later rename of one onto the other a no-op: POSIX ``rename`` between two
links of one file does nothing). A process killed in the middle leaves at most a stray
``.checkpoint_*.tmp.pt`` file, which :func:`remove_stale_temporaries` deletes. A full disk is one
line (:class:`~luser_cli.errors.OutputError`) and leaves both previous checkpoints as they were.
Should ``checkpoint_last.pt`` still be unreadable (a disk that lost data, a user's copy cut short),
:func:`load_resumable` reports it in one line and falls back to ``checkpoint_prev.pt``.

Hostile files: checkpoints are data, loaded only with ``torch.load(..., weights_only=True)``,
whose unpickler refuses every global that is not a plain tensor/container type, so a file that
would run code on load is refused before anything in it runs.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from luser_cli import __version__
from luser_cli.errors import CheckpointError
from luser_cli.io.atomic import atomic_write, atomic_write_bytes
from luser_cli.run_files import BEST, LAST, PREV  # noqa: F401  (ckpt.BEST etc. for callers)

FORMAT = "luser-checkpoint"
VERSION = 1
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
    """Make ``checkpoint_prev.pt`` a copy of the current ``path`` without touching ``path``.

    A copy, not a hard link: ``prev`` and ``last`` must never be one file (see the module
    docstring)."""
    atomic_write_bytes(path.with_name(PREV), path.read_bytes())


def save_checkpoint(
    path: str | Path,
    payload: dict[str, Any],
    *,
    keep_previous: bool = False,
    before_commit: Callable[[Path], None] | None = None,
    after_rotate: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``payload`` atomically. Refuses non-finite weights (never saves NaN).

    With ``keep_previous`` the file being replaced becomes ``checkpoint_prev.pt``.
    ``before_commit(tmp)`` runs once the temporary file is complete, just before it is renamed
    into place, ``after_rotate(tmp)`` once ``checkpoint_prev.pt`` has been replaced and before
    the rename (test hooks: the fault injector kills the process there).
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
    buffer = io.BytesIO()
    torch.save(data, buffer)  # in memory: a full disk is then an OSError of the plain write
    with atomic_write(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(buffer.getbuffer())
        if before_commit is not None:
            before_commit(tmp)
        if keep_previous and path.exists():
            _keep_previous(path)
            if after_rotate is not None:
                after_rotate(tmp)
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


def check_state_shapes(
    expected: dict[str, Any], state: dict[str, Any], source: str, fits: str = "the model"
) -> None:
    """Refuse a state dict whose tensors are missing, unexpected or of another shape than the
    ``expected`` state dict's (one line, before anything is loaded)."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    problem = None
    if missing or extra:
        kind = "missing" if missing else "unexpected"
        problem = f"{kind} tensors {', '.join((missing or extra)[:3])}"
    else:
        for key, want in expected.items():
            got = state[key]
            if not isinstance(got, torch.Tensor):
                problem = f"{key} is not a tensor"
            elif isinstance(want, torch.Tensor) and tuple(got.shape) != tuple(want.shape):
                problem = f"{key} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            if problem:
                break
    if problem:
        raise CheckpointError(f"{source}: weights do not fit {fits} ({problem})")


def check_optimizer_shapes(model: torch.nn.Module, optimizer_state: Any, source: str) -> None:
    """Refuse an optimiser state whose per-parameter tensors (Adam's moments) do not have their
    parameter's shape: loading it would fail later, inside a training step."""
    if not isinstance(optimizer_state, dict) or not isinstance(optimizer_state.get("state"), dict):
        raise CheckpointError(f"{source}: optimizer state missing or malformed")
    params = list(model.parameters())  # the order build_optimizer gives them
    for index, entry in optimizer_state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise CheckpointError(f"{source}: optimizer state names parameter {index!r}")
        if not isinstance(entry, dict):
            raise CheckpointError(f"{source}: optimizer state of parameter {index} is malformed")
        for key, value in entry.items():
            want = tuple(params[index].shape)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != want:
                raise CheckpointError(
                    f"{source}: optimizer tensor {key} of parameter {index} has shape "
                    f"{tuple(value.shape)}, the parameter's is {want}"
                )


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
