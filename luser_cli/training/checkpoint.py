"""Checkpoints: plain data written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values (no pickled classes): the model and
optimiser state, the step counter, the learning-rate scale after any rollbacks, the resolved
preset, task/model/size, versions. It is written to a temporary file and renamed into place,
and the previous ``checkpoint_last.pt`` is kept as ``checkpoint_prev.pt``, so a process killed at
any moment leaves a complete checkpoint behind; a corrupt or truncated one is reported and the
previous good one is used.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
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


def versions() -> dict[str, str]:
    return {"luser": __version__, "torch": str(torch.__version__)}


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if torch.is_floating_point(t))


def save_checkpoint(
    path: str | Path, payload: dict[str, Any], *, keep_previous: bool = False
) -> Path:
    """Write ``payload`` atomically. Refuses non-finite weights (never saves NaN)."""
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
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREV))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate one checkpoint file; every failure is a one-line ``CheckpointError``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{p}: refused: not plain data, loading it could run code (weights_only: {first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{p}: corrupt or truncated checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a luser checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{p}: checkpoint format version {data.get('version')} unsupported")
    for key, typ in _REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise CheckpointError(f"{p}: checkpoint field {key!r} missing or not {typ.__name__}")
    return data


def load_resumable(run_dir: str | Path, warn=print) -> dict[str, Any] | None:
    """The newest good checkpoint of a run (``last``, else ``prev``), or None if there is none."""
    run = Path(run_dir)
    for name in (LAST, PREV):
        p = run / name
        if not p.exists():
            continue
        try:
            return load_checkpoint(p)
        except CheckpointError as e:
            warn(f"warning: {e}; trying the previous checkpoint")
    return None


def check_compatible(
    ckpt: dict[str, Any],
    *,
    task: str,
    image_size: int | None = None,
    channels: int | None = None,
    source: str = "checkpoint",
) -> None:
    """Refuse a checkpoint trained for another task, image size or channel count."""
    if ckpt["task"] != task:
        raise CheckpointError(f"{source} was trained for task {ckpt['task']!r}, not {task!r}")
    if channels is not None and ckpt["channels"] != channels:
        raise CheckpointError(
            f"{source} expects {ckpt['channels']}-channel images, the data have {channels}"
        )
    if image_size is not None and ckpt["image_size"] != image_size:
        raise CheckpointError(
            f"{source} was trained on {ckpt['image_size']}x{ckpt['image_size']} images, "
            f"not {image_size}x{image_size}"
        )


def is_finite_number(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
