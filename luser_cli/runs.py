"""Run folders: find them, and load the trained model they hold.

A run folder (written by ``luser train``) holds ``checkpoint_best.pt``, ``checkpoint_last.pt``,
``metrics.jsonl``, ``preset.toml``, ``run.json`` and ``training_curve.png``. Checkpoints are
loaded with ``weights_only=True`` (:mod:`luser_cli.training.checkpoint`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from luser_cli.errors import CheckpointError
from luser_cli.models.unrolled import ReconstructionModel
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.config import Preset, preset_from_dict
from luser_cli.training.step import build_training_model


def runs_root() -> Path:
    """Where runs go by default: ``$LUSER_RUNS`` or ``./runs``."""
    return Path(os.environ.get("LUSER_RUNS", "runs"))


def default_run_dir(task: str, model: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_root() / f"{task}-{model}-{stamp}"


@dataclass
class TrainedModel:
    model: ReconstructionModel
    preset: Preset
    checkpoint: dict[str, Any]
    path: Path

    @property
    def task(self) -> str:
        return self.preset.task

    @property
    def name(self) -> str:
        return self.checkpoint["model"]


def checkpoint_file(path: str | Path, which: str = "best") -> Path:
    """A checkpoint file from a run folder (``best``, falling back to ``last``) or a file path."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"no run folder or checkpoint at {p}")
    order = [ckpt.BEST, ckpt.LAST, ckpt.PREV] if which == "best" else [ckpt.LAST, ckpt.PREV]
    for name in order:
        if (p / name).is_file():
            return p / name
    raise CheckpointError(f"{p} holds no checkpoint (train a model into it first)")


def newest_run(task: str, root: str | Path | None = None) -> Path:
    """The most recently written run folder for ``task`` under ``root`` (``$LUSER_RUNS``/runs)."""
    base = Path(root) if root is not None else runs_root()
    candidates = []
    for folder in base.glob("*") if base.is_dir() else []:
        f = folder / ckpt.BEST if (folder / ckpt.BEST).is_file() else folder / ckpt.LAST
        if not f.is_file():
            continue
        try:
            meta = ckpt.load_checkpoint(f)
        except CheckpointError:
            continue
        if meta["task"] == task:
            candidates.append((f.stat().st_mtime, folder))
    if not candidates:
        raise CheckpointError(
            f"no trained run for task {task} under {base}: train one with "
            f"`luser train --task {task}` or pass --checkpoint RUN"
        )
    return max(candidates)[1]


def load_trained(
    path: str | Path, device: torch.device | str = "cpu", which: str = "best"
) -> TrainedModel:
    """Rebuild the model of a run (or checkpoint file) and load its weights, in eval mode."""
    f = checkpoint_file(path, which)
    data = ckpt.load_checkpoint(f)
    preset = preset_from_dict(data["preset"], f"{f} preset")
    if preset.task != data["task"] or preset.image_size != data["image_size"]:
        raise CheckpointError(f"{f}: checkpoint preset does not match its task/size fields")
    state = data["model_state"]
    scale = state.get("step_scale")
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        raise CheckpointError(f"{f}: model state has no single-number step_scale")
    model = build_training_model(preset, data["model"], step_scale=float(scale))
    ckpt.check_state_shapes(model.state_dict(), state, str(f), f"a {data['model']} model")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:160]
        raise CheckpointError(
            f"{f}: weights do not fit a {data['model']} model ({first})"
        ) from None
    return TrainedModel(model.to(device).eval(), preset, data, f)
