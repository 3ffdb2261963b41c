"""Run the paper comparison: every task x model x loss cell trained and evaluated alike.

Each cell of :class:`~luser_cli.bench.settings.BenchSettings` is one ``luser train`` run
(:class:`~luser_cli.training.loop.Trainer`, the same code path as the command) with the task's
paper-recipe preset (``ct-paper`` for CT, the task's own preset elsewhere) and the bench's
image size, steps, batch size and seed, followed by ``luser eval``
(:func:`~luser_cli.evaluation.runner.evaluate`) on the same held-out built-in test images for
every model, and a measurement of the training memory (:mod:`luser_cli.bench.memory`). Only the
bench's own settings are overridden; learning rates, solvers and everything else come from the
presets, identical for every model of a task.

Cells write their run folder ``<out>/<task>-<model>-<loss>`` (checkpoints, ``metrics.jsonl``)
and, once done, ``bench_cell.json``. A rerun with the same settings reuses finished cells and
resumes interrupted trainings from their last checkpoint. A cell that fails (training diverged
past its rollbacks, a solver error, ...) is recorded with its one-line reason and the bench
goes on with the next one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from luser_cli.bench.settings import BenchSettings
from luser_cli.bench.stats import finite, training_stats
from luser_cli.errors import ConfigError, LuserError
from luser_cli.io.atomic import atomic_write
from luser_cli.training.config import Preset
from luser_cli.training.convergence import WARN_BELOW

__all__ = [
    "CELL_FILE",
    "BenchRun",
    "classical_summary",
    "run_bench",
    "run_cell",
]

CELL_FILE = "bench_cell.json"
SCHEMA = "luser-bench/1"


# -- one cell -----------------------------------------------------------------------------------
def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, LuserError) else f"internal error: {type(e).__name__}: {text}"


def _train(
    settings: BenchSettings,
    preset: Preset,
    model: str,
    run_dir: Path,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train (or resume) the cell's run; returns the trainer's summary."""
    from luser_cli.training import checkpoint as ckpt
    from luser_cli.training.loop import Trainer

    resume = any((run_dir / n).exists() for n in (ckpt.LAST, ckpt.PREV))
    if resume:
        stored = ckpt.stored_preset(run_dir)
        if stored is not None and stored != preset.model_dump(mode="json"):
            raise ConfigError(
                f"{run_dir} holds a run with other settings; remove it or choose another --out"
            )
    trainer = Trainer(
        preset, model, run_dir, device=settings.device, resume=resume, progress=progress, log=log
    )
    return trainer.run()


def _evaluate(settings: BenchSettings, run_dir: Path) -> dict[str, Any]:
    """``luser eval`` of the trained run on the bench's held-out built-in test images."""
    from luser_cli.devices import resolve_device
    from luser_cli.evaluation.runner import Examples, evaluate
    from luser_cli.runs import load_trained

    device = resolve_device(settings.device)
    trained = load_trained(run_dir, device)
    examples = Examples(limit=settings.eval_images)  # keeps every image's PSNR, for pairing
    start = time.perf_counter()
    result = evaluate(
        trained,
        data=None,
        split="test",
        n_images=settings.eval_images,
        device=device,
        examples=examples,
    )
    seconds = time.perf_counter() - start
    metrics = result["metrics"]
    best = result["best_classical"]
    model = metrics["model"]
    return {
        "n_images": result["n_images"],
        "checkpoint": result["checkpoint"],
        "psnr": finite(model["psnr"]),
        "psnr_std": finite(model["psnr_std"]),
        "ssim": finite(model["ssim"]),
        "ssim_std": finite(model["ssim_std"]),
        "seconds_per_image": finite(model["seconds_per_image"]),
        "fp_forward_iterations_per_image": finite(model.get("fp_forward_iterations_per_image")),
        "operator_applications_per_image": finite(model["operator_applications_per_image"]),
        "psnr_per_image": [finite(row.get("model")) for row in examples.psnr],
        "best_classical": best,
        "classical": {
            name: {k: finite(v) for k, v in m.items()}
            for name, m in metrics.items()
            if name != "model"
        },
        "classical_psnr_per_image": (
            [finite(row.get(best)) for row in examples.psnr] if best else []
        ),
        "model_minus_best_classical_db": finite(result["model_minus_best_classical_db"]),
        "eval_seconds": round(seconds, 2),
    }


def _cell_key(settings: BenchSettings, preset: Preset, model: str) -> dict[str, Any]:
    """What a finished cell's results depend on (a rerun with the same key reuses them)."""
    return {
        "preset": _preset_key(preset.for_model(model)),
        "model": model,
        "eval_images": settings.eval_images,
        "device": settings.device,
        "memprobe": settings.memprobe,
    }


def _preset_key(preset: Preset) -> dict[str, Any]:
    """The preset as a cell key: settings added later drop out while unset, so cells run
    before they existed stay reusable (an unset one means the behaviour from before)."""
    data = preset.model_dump(mode="json")
    for field_name in ("deq4ip_norm", "deq4ip_anchor"):
        if data["model"].get(field_name) is None:
            data["model"].pop(field_name, None)
    for side in ("forward", "backward"):
        if data["solver"][side].get("regularization_scale") is None:
            data["solver"][side].pop("regularization_scale", None)
    return data


def _load_cell(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return data


def run_cell(
    settings: BenchSettings,
    task: str,
    model: str,
    loss: str,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    sim_cache: dict[tuple[str, str], Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and measure one cell; never raises for a failed training (the result
    then has ``status: "failed"`` and a one-line ``reason``), except an interruption by
    SIGINT/SIGTERM, which stops the bench (rerun to resume)."""
    from luser_cli.bench.memory import measure_training_memory, sim_batch_24gb
    from luser_cli.training.recovery import TrainingInterrupted

    run_dir = settings.cell_dir(task, model, loss)
    preset = settings.preset(task, loss)
    key = _cell_key(settings, preset, model)
    done = _load_cell(run_dir / CELL_FILE, key)
    if done is not None:
        done["reused"] = True
        if sim_cache is not None and done.get("memory_sim_24gb") is not None:
            sim_cache[(task, model)] = done["memory_sim_24gb"]
        return done
    cell: dict[str, Any] = {
        "task": task,
        "model": model,
        "loss": loss,
        "status": "ok",
        "reason": None,
        "run_dir": str(run_dir),
        "train_command": settings.train_command(task, model, loss),
        "image_size": settings.image_size,
        "lr": preset.train.lr,
    }
    start = time.perf_counter()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        summary = _train(settings, preset, model, run_dir, progress, log)
        cell["parameters"] = summary["parameters"]
        cell["train"] = {
            "steps": summary["steps"],
            "seconds": round(summary["seconds"], 2),
            "rollbacks": summary["rollbacks"],
            "fp_nonconverged": summary["fp_nonconverged"],
            "best_val_psnr": finite(summary["best_val_psnr"]),
            **training_stats(run_dir / "metrics.jsonl"),
        }
        cell["eval"] = _evaluate(settings, run_dir)
    except TrainingInterrupted:
        raise
    except Exception as e:
        if os.environ.get("LUSER_DEBUG") and not isinstance(e, LuserError):
            raise
        cell["status"] = "failed"
        cell["reason"] = _one_line(e)
        log(f"  failed: {cell['reason']}")
        _partial_training_facts(cell, run_dir)
    try:
        cell["memory"] = measure_training_memory(preset, model)
        cell.setdefault("parameters", cell["memory"]["parameters"])
        pair = (task, model)
        if sim_cache is not None and pair in sim_cache:
            cell["memory_sim_24gb"] = sim_cache[pair]
        else:
            sim = sim_batch_24gb(
                task,
                model,
                settings.memprobe,
                settings.memprobe_results,
                parameters=cell["parameters"],
            )
            cell["memory_sim_24gb"] = sim
            if sim_cache is not None:
                sim_cache[pair] = sim
    except Exception as e:
        if os.environ.get("LUSER_DEBUG") and not isinstance(e, LuserError):
            raise
        cell["memory_error"] = _one_line(e)
    cell["seconds_total"] = round(time.perf_counter() - start, 2)
    cell["key"] = key
    with atomic_write(run_dir / CELL_FILE, make_parents=True) as tmp:
        tmp.write_text(json.dumps(cell, indent=2) + "\n", encoding="utf-8")
    return cell


def _partial_training_facts(cell: dict[str, Any], run_dir: Path) -> None:
    """For a failed cell: what its ``metrics.jsonl`` holds (steps done, rollbacks)."""
    path = run_dir / "metrics.jsonl"
    if path.exists():
        stats = training_stats(path)
        cell["train"] = {
            k: stats[k] for k in ("steps_logged", "time_per_step_s", "rollback_events")
        }


# -- the whole bench ----------------------------------------------------------------------------
@dataclass
class BenchRun:
    """Results so far; :meth:`as_dict` is the JSON document."""

    settings: BenchSettings
    command: str
    machine: dict[str, Any]
    started: str
    cells: list[dict[str, Any]] = field(default_factory=list)
    finished: str | None = None
    elapsed_s: float | None = None
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        from luser_cli.bench.report import findings, paper_section, scale_section

        return {
            "schema": SCHEMA,
            "command": self.command,
            "date": self.started,
            "finished": self.finished,
            "elapsed_s": self.elapsed_s,
            "complete": self.complete,
            "machine": self.machine,
            "settings": self.settings.as_dict(),
            "scale": scale_section(self.settings),
            "cells": [{k: v for k, v in c.items() if k != "key"} for c in self.cells],
            "classical": classical_summary(self.cells),
            "findings": findings(self.cells),
            "paper": paper_section(self.settings),
        }


def classical_summary(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per task: the best classical method on the bench's test images (the same images and
    measurements for every model; taken from the first evaluated cell of the task)."""
    out: dict[str, Any] = {}
    for c in cells:
        ev = c.get("eval")
        if c["task"] in out or not ev or not ev.get("best_classical"):
            continue
        best = ev["best_classical"]
        m = ev["classical"][best]
        out[c["task"]] = {
            "method": best,
            "psnr": m.get("psnr"),
            "psnr_std": m.get("psnr_std"),
            "ssim": m.get("ssim"),
            "ssim_std": m.get("ssim_std"),
            "seconds_per_image": m.get("seconds_per_image"),
            "all": {
                k: {"psnr": v.get("psnr"), "ssim": v.get("ssim")}
                for k, v in ev["classical"].items()
            },
        }
    return out


def run_bench(
    settings: BenchSettings,
    *,
    command: str = "luser bench (called from Python)",
    progress: bool = False,
    log: Callable[[str], None] = print,
    on_cell: Callable[[BenchRun], None] | None = None,
) -> BenchRun:
    """Run every cell of ``settings``; ``on_cell`` sees the results after each cell (to write
    partial reports). Returns the finished run."""
    from luser_cli.bench.machine import load_average, machine_info, now_iso

    settings.check()
    machine = machine_info()
    machine["load_average_start"] = machine.pop("load_average")
    machine["torch_threads"] = torch.get_num_threads()
    run = BenchRun(settings=settings, command=command, machine=machine, started=now_iso())
    start = time.perf_counter()
    cells = settings.cells()
    sim_cache: dict[tuple[str, str], Any] = {}
    for i, (task, model, loss) in enumerate(cells, 1):
        label = f"[{i}/{len(cells)}] {task} {model} {loss}-loss"
        log(
            f"{label}: {settings.steps} steps x batch {settings.batch_size} at "
            f"{settings.image_size} px -> {settings.cell_dir(task, model, loss)}"
        )
        cell = run_cell(
            settings, task, model, loss, progress=progress, log=log, sim_cache=sim_cache
        )
        run.cells.append(cell)
        log(f"{label}: {_cell_line(cell)}")
        run.elapsed_s = round(time.perf_counter() - start, 1)
        if on_cell is not None:
            on_cell(run)
    run.finished = now_iso()
    run.elapsed_s = round(time.perf_counter() - start, 1)
    run.machine["load_average_end"] = load_average()
    run.complete = True
    return run


def _cell_line(cell: dict[str, Any]) -> str:
    prefix = "reused; " if cell.get("reused") else ""
    if cell["status"] != "ok":
        return f"{prefix}FAILED: {cell['reason']}"
    ev, tr = cell["eval"], cell["train"]
    return (
        f"{prefix}PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.3f} "
        f"({ev['best_classical']} {ev['classical'][ev['best_classical']]['psnr']:.2f} dB); "
        f"{tr['time_per_step_s']:.2f} s/step; {cell['seconds_total']:.0f} s" + _bwd_text(tr)
    )


def _bwd_text(train: dict[str, Any]) -> str:
    """``; backward converged on 12% of steps (approximate gradients)`` when recorded."""
    share = train.get("bwd_converged_step_fraction")
    if share is None:
        return ""
    text = f"; backward solve converged on {share:.0%} of steps"
    return text + " (WARNING: mostly approximate gradients)" if share < WARN_BELOW else text
