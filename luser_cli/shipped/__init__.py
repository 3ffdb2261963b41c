"""Models shipped inside the package: one LUSER-DW per task, with its model card.

Each task has ``<task>.pt`` (a luser checkpoint holding only the model weights, the preset it
was trained with and its task/model/size fields; loaded with ``weights_only=True`` like every
checkpoint) and ``<task>.json`` (its model card: data, command, steps, wall time, machine,
versions, metrics on real images, sha256 of the ``.pt``). They are made by
``examples/shipped_models/train_all.sh`` and :func:`luser_cli.shipped.export.export_shipped`.

Where a command takes a model (``--checkpoint`` of ``reconstruct`` and ``eval``, ``--init`` of
``train``), ``builtin`` names the shipped model of the task, ``latest`` the newest local run of
the task, and anything else a run folder or a checkpoint file (:func:`resolve_model`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luser_cli.errors import CheckpointError
from luser_cli.tasks import get_task

SHIPPED_DIR = Path(__file__).parent
BUILTIN = "builtin"
LATEST = "latest"


def shipped_file(task: str) -> Path:
    """The shipped weights of ``task``; a one-line error when this install has none."""
    name = get_task(task).name
    path = SHIPPED_DIR / f"{name}.pt"
    if not path.is_file():
        raise CheckpointError(
            f"this luser install ships no model for task {name} ({path} is missing): "
            f"pass --checkpoint RUN or train one with `luser train --task {name}`"
        )
    return path


def model_card(task: str) -> dict[str, Any]:
    """The model card of the shipped model of ``task`` (a dict; empty when there is none)."""
    path = SHIPPED_DIR / f"{get_task(task).name}.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: the checkpoint ``path`` and a short ``label`` for messages."""

    path: Path
    label: str
    shipped: bool


def resolve_model(ref: str | Path | None, task: str) -> ModelRef:
    """``None`` or ``builtin`` -> the shipped model of ``task``; ``latest`` -> the newest run of
    ``task`` under ``$LUSER_RUNS``/``runs``; otherwise a run folder or checkpoint file."""
    from luser_cli.runs import newest_run

    text = None if ref is None else str(ref)
    if text is None or text == BUILTIN:
        path = shipped_file(task)
        return ModelRef(path, f"the shipped {get_task(task).name} model ({path})", True)
    if text == LATEST:
        run = newest_run(task)
        return ModelRef(run, f"the newest local {get_task(task).name} run ({run})", False)
    return ModelRef(Path(text), f"{text}", False)
