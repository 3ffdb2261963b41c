"""Training memory of a benchmark cell, two ways.

* Measured here: the peak of live tensor storage (:class:`~luser_cli.memprobe.tracker.
  StorageTracker`) during one REAL training step on this CPU, at the bench image size, built
  exactly as ``luser train`` builds it (same model, optimiser, data path, loss, solver settings;
  the fixed-point solvers run to their tolerance). Everything alive before the step (weights,
  optimiser state, batch, operator buffers) is counted too. Measured at batch 1 and batch 2:
  ``peak_mb_batch1`` is the "memory per sample" of the tables, ``per_sample_mb`` the slope
  (the cost of each further sample).
* Simulated at the paper's image size: the largest batch that trains on a 24 GB GPU from the
  memprobe ``sim`` oracle (paper Table 3's last row), reused from a ``luser memprobe`` JSON
  (``examples/memprobe/results.json``) when its row is for the same model, image size and
  parameter count, else simulated now (seconds to a minute per model).
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

import torch

from luser_cli.memprobe.oracle import prime_optimizer
from luser_cli.memprobe.paper import paper_task
from luser_cli.memprobe.tracker import StorageTracker, track_training_state
from luser_cli.models.registry import count_parameters
from luser_cli.training.batches import Batch, BatchMaker, stack_items
from luser_cli.training.config import Preset
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    clip_gradients,
    forward_backward,
)

__all__ = [
    "MB",
    "MEMPROBE_MODES",
    "MEMPROBE_RESULTS",
    "measure_training_memory",
    "sim_batch_24gb",
]

MB = 2**20
#: Where ``luser memprobe`` results are looked up by default (relative to the repository).
MEMPROBE_RESULTS = Path(__file__).resolve().parents[2] / "examples" / "memprobe" / "results.json"
#: ``--memprobe``: reuse matching rows of a memprobe JSON (else simulate), always simulate, skip.
MEMPROBE_MODES: tuple[str, ...] = ("reuse", "sim", "off")
SIM_GPU_GB = 24.0


def build_real_step(preset: Preset, model_name: str, batch: int) -> tuple[Any, Any, Batch]:
    """``(model, optimizer, batch)`` on CPU exactly as ``luser train`` builds them for its first
    step: the preset's model and solver, Adam with its state allocated, ``batch`` built-in
    training images simulated through :class:`BatchMaker`. The preset is resolved for the model
    as the trainer resolves it (``Preset.for_model``: e.g. DEQ4IP's map of new runs)."""
    from luser_cli.data.sources import open_dataset

    preset = preset.for_model(model_name)
    torch.manual_seed(preset.train.seed)
    maker = BatchMaker.for_preset(preset, torch.device("cpu"))
    model = build_training_model(preset, model_name, step_scale=1.0 / maker.norm_sq())
    model.train()
    optimizer = build_optimizer(model, preset.train)
    prime_optimizer(model, optimizer)  # Adam's state exists from the first real step on
    data = open_dataset(
        preset.task, "train", preset.image_size, None, preset.train.seed, size=batch
    )
    x, meta = stack_items(data, range(batch))
    return model, optimizer, maker.make(x, meta, epoch=0, seed=preset.train.seed)


def _step_peak(preset: Preset, model_name: str, batch: int) -> tuple[int, int, int]:
    """``(peak bytes, bytes alive before the step, parameters)`` of one real training step."""
    model, optimizer, b = build_real_step(preset, model_name, batch)
    tracker = StorageTracker()
    track_training_state(tracker, model, optimizer, b)
    before = tracker.live
    with tracker:
        out, loss = forward_backward(model, optimizer, b, preset.train, torch.device("cpu"))
        clip_gradients(model, preset.train)
        optimizer.step()
        del out, loss
    peak = tracker.peak
    parameters = count_parameters(model)
    del model, optimizer, b
    gc.collect()
    return peak, before, parameters


def measure_training_memory(preset: Preset, model_name: str) -> dict[str, Any]:
    """Peak live tensor storage of one real training step at batch 1 and 2 (MB)."""
    start = time.perf_counter()
    p1, static1, params = _step_peak(preset, model_name, 1)
    p2, _, _ = _step_peak(preset, model_name, 2)
    return {
        "method": "real training step on CPU, peak of live tensor storage (memprobe tracker)",
        "image_size": preset.image_size,
        "peak_mb_batch1": round(p1 / MB, 3),
        "peak_mb_batch2": round(p2 / MB, 3),
        "per_sample_mb": round((p2 - p1) / MB, 3),
        "static_mb": round(static1 / MB, 3),
        "parameters": params,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _memprobe_rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["rows"]
        meta = {k: data.get(k) for k in ("command", "date", "backend")}
        return (rows if isinstance(rows, list) else []), meta
    except (OSError, ValueError, KeyError, TypeError):
        return [], {}


def _reusable_row(
    rows: list[dict[str, Any]], task: str, model: str, image_size: int, parameters: int | None
) -> dict[str, Any] | None:
    """A 24 GB row of the same Table 3 group (mri4x stands for mri8x: same shapes, same memory),
    model and image size, simulated for a model with the same parameter count."""
    group = paper_task(task)
    for row in rows:
        if not isinstance(row, dict):
            continue
        same_task = row.get("task") == task or (
            group is not None and paper_task(str(row.get("task"))) == group
        )
        if (
            same_task
            and row.get("model") == model
            and float(row.get("gpu_gb", 0)) == SIM_GPU_GB
            and row.get("image_size") == image_size
            and row.get("backend") == "sim"
            and (parameters is None or row.get("parameters") == parameters)
        ):
            return row
    return None


def sim_batch_24gb(
    task: str,
    model: str,
    mode: str = "reuse",
    results: Path | None = None,
    parameters: int | None = None,
) -> dict[str, Any] | None:
    """Largest training batch on a 24 GB GPU at the paper's (preset's) image size, from the
    memprobe ``sim`` oracle; ``None`` when ``mode == "off"``. ``parameters``: the model's count
    at the bench size (independent of the image size), to check a reused row is current."""
    from luser_cli.memprobe.allowance import GIB
    from luser_cli.memprobe.paper import paper_rounding
    from luser_cli.memprobe.search import max_batch
    from luser_cli.memprobe.sim_oracle import SimOracle
    from luser_cli.tasks import get_task

    if mode == "off":
        return None
    size = get_task(task).image_size
    if mode == "reuse":
        path = results if results is not None else MEMPROBE_RESULTS
        rows, meta = _memprobe_rows(path)
        row = _reusable_row(rows, task, model, size, parameters)
        if row is not None:
            return {
                "gpu_gb": SIM_GPU_GB,
                "image_size": size,
                "max_batch": row["max_batch"],
                "max_batch_paper_rounding": paper_rounding(int(row["max_batch"])),
                "per_sample_gb": row.get("per_sample_gb"),
                "source": f"{path.name} ({row['task']} row; {meta.get('command')}, "
                f"{meta.get('date')})",
            }
    start = time.perf_counter()
    oracle = SimOracle(task, model)
    capacity = round(SIM_GPU_GB * GIB)
    oracle.fits(1, capacity)
    found = max_batch(
        lambda b: oracle.fits(b, capacity), predict=lambda lo, hi: oracle.guess(capacity)
    )
    summary = oracle.summary()
    return {
        "gpu_gb": SIM_GPU_GB,
        "image_size": size,
        "max_batch": found.max_batch,
        "max_batch_paper_rounding": paper_rounding(found.max_batch),
        "per_sample_gb": summary.get("per_sample_gb"),
        "source": f"memprobe sim oracle, run now ({time.perf_counter() - start:.0f} s)",
    }
