"""Turn a trained run into a shipped model: weights-only checkpoint plus model card.

The exported ``.pt`` is a luser checkpoint (same format and loader) without the optimiser, RNG
and schedule state, so it is a third of the size and loads with ``weights_only=True`` like any
checkpoint. The card records how it was made; :func:`export_shipped` adds the file's size,
parameter count and sha256.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from luser_cli.io.atomic import atomic_write_bytes
from luser_cli.shipped import sha256_of
from luser_cli.training import checkpoint as ckpt

#: Checkpoint fields a shipped model keeps (the rest is training state).
KEPT = (
    "format",
    "version",
    "versions",
    "created",
    "task",
    "model",
    "image_size",
    "channels",
    "parameters",
    "preset",
    "model_state",
    "step",
    "best_val_psnr",
)


def export_weights(source: str | Path, dest: str | Path) -> dict[str, Any]:
    """Write the weights-only checkpoint of ``source`` (a run folder: its best checkpoint, or a
    checkpoint file) to ``dest``; returns the kept fields (tensors included)."""
    from luser_cli.runs import checkpoint_file

    return _write(ckpt.load_checkpoint(checkpoint_file(source)), Path(dest))


def _write(data: dict[str, Any], dest: Path) -> dict[str, Any]:
    kept = {k: data[k] for k in KEPT if k in data}
    kept["model_state"] = {
        k: v.detach().clone().contiguous() for k, v in data["model_state"].items()
    }
    buffer = io.BytesIO()
    torch.save(kept, buffer)
    atomic_write_bytes(dest, buffer.getvalue(), make_parents=True)
    ckpt.load_checkpoint(dest)  # what ships must load the way users load it
    return kept


def export_shipped(source: str | Path, folder: str | Path, card: dict[str, Any]) -> Path:
    """Export ``source`` as ``<folder>/<task>.pt`` with the card ``<folder>/<task>.json``.

    ``card`` holds what only the caller knows (data, command, wall time, machine, metrics);
    task, model, image size, steps, parameters, versions, size and sha256 come from the file.
    """
    from luser_cli.runs import checkpoint_file

    folder = Path(folder)
    data = ckpt.load_checkpoint(checkpoint_file(source))
    dest = folder / f"{data['task']}.pt"
    kept = _write(data, dest)
    full = {
        "task": kept["task"],
        "model": kept["model"],
        "image_size": kept["image_size"],
        "parameters": kept.get("parameters"),
        "steps": kept["step"],
        "best_val_psnr_db": kept.get("best_val_psnr"),
        "versions": kept.get("versions"),
        **card,
        "file": dest.name,
        "bytes": dest.stat().st_size,
        "sha256": sha256_of(dest),
    }
    card_bytes = (json.dumps(full, indent=2) + "\n").encode()
    atomic_write_bytes(folder / f"{kept['task']}.json", card_bytes)
    return dest
