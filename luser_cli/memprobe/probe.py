"""The memory table: for each task x model x GPU capacity, the largest batch that trains.

One oracle per (task, model) answers every capacity: capacities are searched in increasing
order, each search starting from the oracle's prediction (an affine fit of the peaks measured
so far), and the ``sim`` oracle caches one simulated peak per batch size, so a capacity usually
costs two new simulations (the boundary ``b`` and ``b + 1``).

Rows are plain dicts ready for JSON (keys in :data:`ROW_KEYS` first);
:mod:`luser_cli.memprobe.table` lays them out like paper Table 3, with the paper's numbers
beside ours.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from luser_cli.errors import ConfigError
from luser_cli.memprobe.allowance import GIB, Allowance
from luser_cli.memprobe.cuda_oracle import CudaOracle
from luser_cli.memprobe.oracle import Oracle
from luser_cli.memprobe.paper import (
    paper_max_batch,
    paper_parameters,
    paper_rounding,
)
from luser_cli.memprobe.presets import check_recipe, probe_preset
from luser_cli.memprobe.search import DEFAULT_CAP, max_batch
from luser_cli.memprobe.sim_oracle import SimOracle, prepare
from luser_cli.models.registry import MODEL_NAMES, check_model_name, is_equilibrium_model
from luser_cli.tasks import get_task
from luser_cli.training.config import paper_preset_name

__all__ = [
    "BACKENDS",
    "DEFAULT_CAPACITIES_GB",
    "DEFAULT_TASKS",
    "ROW_KEYS",
    "Reporter",
    "Timer",
    "check_request",
    "default_jobs",
    "make_oracle",
    "probe_model",
    "resolve_backend",
    "run_probe",
]

DEFAULT_TASKS: tuple[str, ...] = ("deblur", "ct", "mri4x")
DEFAULT_CAPACITIES_GB: tuple[float, ...] = (8.0, 10.0, 24.0)
BACKENDS: tuple[str, ...] = ("auto", "sim", "cuda")
#: The documented keys every row has (more follow).
ROW_KEYS: tuple[str, ...] = ("task", "model", "gpu_gb", "max_batch", "peak_gb_at_max", "backend")


class Reporter:
    """Progress callbacks of :func:`run_probe` (no-ops here; the CLI shows a rich bar)."""

    def start(self, total: int) -> None:
        """``total`` (task, model, capacity) entries will be probed."""

    def status(self, text: str) -> None:
        """What is being probed now."""

    def advance(self) -> None:
        """One entry is done."""


def resolve_backend(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``sim``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "sim"
    return name


def make_oracle(
    backend: str,
    task: str,
    model: str,
    image_size: int | None,
    allowance: Allowance,
    iterations: int | None = None,
    graph: str | None = None,
    recipe: str = "shipped",
) -> Oracle:
    """The oracle of ``backend`` (``sim`` or ``cuda``) for one task and model; ``graph``
    overrides the preset's ``solver.graph`` (equilibrium models); ``recipe`` picks the task's
    shipped preset or the paper's (:data:`~luser_cli.memprobe.presets.RECIPES`)."""
    preset = probe_preset(task, image_size, graph, recipe)
    if backend == "sim":
        kwargs = {} if iterations is None else {"iterations": iterations}
        return SimOracle(task, model, allowance=allowance, preset=preset, **kwargs)
    if backend == "cuda":
        return CudaOracle(task, model, allowance=allowance, preset=preset)
    raise ConfigError(f"unknown backend {backend!r}; choose sim or cuda")


def _gb_bytes(gpu_gb: float) -> int:
    return round(gpu_gb * GIB)


def probe_model(
    oracle: Oracle,
    capacities_gb: Sequence[float],
    cap: int = DEFAULT_CAP,
    reporter: Reporter | None = None,
) -> list[dict[str, Any]]:
    """One row per capacity (in the order given) for the oracle's task and model."""
    reporter = reporter or Reporter()
    label = f"{oracle.task} {oracle.model_name}"
    results: dict[float, dict[str, Any]] = {}
    ordered = sorted(set(capacities_gb))
    if oracle.guess(_gb_bytes(ordered[0])) is None:
        # one measurement at batch 1 seeds the predictions (static + per-sample bytes)
        reporter.status(f"{label}, {ordered[0]:g} GB: batch 1")
        oracle.fits(1, _gb_bytes(ordered[0]))
    for gpu_gb in ordered:
        capacity = _gb_bytes(gpu_gb)
        start = time.perf_counter()

        def fits(b: int, capacity: int = capacity, gpu_gb: float = gpu_gb) -> bool:
            reporter.status(f"{label}, {gpu_gb:g} GB: batch {b}")
            return oracle.fits(b, capacity)

        def predict(lo: int, hi: int, capacity: int = capacity) -> int | None:
            return oracle.guess(capacity)

        found = max_batch(fits, cap=cap, predict=predict)
        peak = oracle.peak_bytes(found.max_batch) if found.max_batch else None
        results[gpu_gb] = {
            "max_batch": found.max_batch,
            "peak_gb_at_max": None if peak is None else round(peak / GIB, 4),
            "cap_reached": found.cap_reached,
            "oracle_calls": len(found.calls),
            "search_seconds": round(time.perf_counter() - start, 2),
        }
        reporter.advance()
    rows = []
    summary = oracle.summary()
    allowance = oracle.allowance
    for gpu_gb in capacities_gb:
        r = results[gpu_gb]
        row: dict[str, Any] = {
            "task": oracle.task,
            "model": oracle.model_name,
            "gpu_gb": gpu_gb,
            "max_batch": r["max_batch"],
            "peak_gb_at_max": r["peak_gb_at_max"],
            "backend": oracle.backend,
            # what the equilibrium layers keep from forward to backward (None: no such layer)
            "fp_graph": (
                oracle.preset.solver.graph if is_equilibrium_model(oracle.model_name) else None
            ),
            "image_size": oracle.image_size,
            "parameters": oracle.parameters,
            "max_batch_paper_rounding": paper_rounding(r["max_batch"]),
            "cap": cap,
            "cap_reached": r["cap_reached"],
            "oracle_calls": r["oracle_calls"],
            "search_seconds": r["search_seconds"],
        }
        if oracle.backend == "sim":
            peak = oracle.peak_bytes(r["max_batch"]) if r["max_batch"] else None
            row["required_gb_at_max"] = (
                None if peak is None else round(allowance.required_bytes(peak) / GIB, 4)
            )
        row["allowance"] = _allowance_for(oracle.backend, allowance)
        row.update({k: _rounded(v) for k, v in summary.items()})
        # the paper's numbers are for its image sizes (our presets' sizes) only
        at_paper_size = oracle.image_size == get_task(oracle.task).image_size
        row["paper_max_batch"] = (
            paper_max_batch(oracle.task, oracle.model_name, gpu_gb) if at_paper_size else None
        )
        row["paper_parameters"] = paper_parameters(oracle.task, oracle.model_name)
        rows.append(row)
    return rows


def _allowance_for(backend: str, allowance: Allowance) -> dict[str, Any]:
    if backend == "sim":
        return allowance.as_dict()
    return {"context_gb": allowance.context_gb}


def _rounded(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def check_request(
    tasks: Sequence[str], models: Sequence[str], capacities_gb: Sequence[float], cap: int
) -> None:
    """One-line errors for bad names and sizes (before anything is built)."""
    for t in tasks:
        get_task(t)
    for m in models:
        check_model_name(m)
    if not capacities_gb:
        raise ConfigError("give at least one --gpu-gb")
    for gb in capacities_gb:
        if not (math.isfinite(gb) and gb > 0):
            raise ConfigError(f"--gpu-gb must be a positive number of GB, got {gb:g}")
    if cap < 1:
        raise ConfigError(f"--cap must be at least 1, got {cap}")


#: Rough relative cost of simulating one model (for scheduling the longest first).
_MODEL_COST = {"luser-dw": 4, "luser-sw": 3, "deq4ip": 2, "lu-dncnn": 1}


def default_jobs(backend: str, pairs: int) -> int:
    """Worker processes for ``pairs`` (task, model) pairs: one per CPU core for ``sim`` (fake
    tensors are single-threaded Python work), one for ``cuda`` (one GPU)."""
    if backend != "sim":
        return 1
    return max(1, min(os.cpu_count() or 1, pairs))


def run_probe(
    tasks: Sequence[str] = DEFAULT_TASKS,
    models: Sequence[str] = MODEL_NAMES,
    capacities_gb: Sequence[float] = DEFAULT_CAPACITIES_GB,
    *,
    image_size: int | None = None,
    backend: str = "auto",
    allowance: Allowance | None = None,
    cap: int = DEFAULT_CAP,
    iterations: int | None = None,
    jobs: int = 1,
    reporter: Reporter | None = None,
    graph: str | None = None,
    recipe: str = "shipped",
) -> list[dict[str, Any]]:
    """The whole table: rows ordered by task, then model, then capacity (as given).

    With ``jobs > 1`` (``sim`` only) the (task, model) pairs are probed in that many worker
    processes, the most expensive first; values that need real tensors (``||A||^2``, the
    Radon stand-in's scratch) are computed once, in this process.
    """
    check_request(tasks, models, capacities_gb, cap)
    check_recipe(recipe)
    chosen = resolve_backend(backend)
    allowance = allowance if allowance is not None else Allowance()
    reporter = reporter or Reporter()
    reporter.start(len(tasks) * len(models) * len(set(capacities_gb)))
    pairs = [(t, m) for t in tasks for m in models]
    if chosen != "sim" or jobs <= 1 or len(pairs) == 1:
        rows: list[dict[str, Any]] = []
        for task, model in pairs:
            reporter.status(f"{task} {model}: building the model")
            oracle = make_oracle(
                chosen, task, model, image_size, allowance, iterations, graph, recipe
            )
            rows.extend(probe_model(oracle, capacities_gb, cap, reporter))
            del oracle
        return _name_presets(rows, recipe)
    job = {
        "image_size": image_size,
        "capacities": list(capacities_gb),
        "allowance": allowance.as_dict(),
        "cap": cap,
        "iterations": iterations,
        "graph": graph,
        "recipe": recipe,
    }
    by_pair = _run_parallel(pairs, job, min(jobs, len(pairs)), reporter)
    return _name_presets([row for pair in pairs for row in by_pair[pair]], recipe)


def _name_presets(rows: list[dict[str, Any]], recipe: str) -> list[dict[str, Any]]:
    """Record in each row which shipped preset it measured (``ct`` or ``ct-paper``)."""
    for row in rows:
        row["preset"] = paper_preset_name(row["task"]) if recipe == "paper" else row["task"]
    return rows


def _run_parallel(
    pairs: list[tuple[str, str]], job: dict[str, Any], jobs: int, reporter: Reporter
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Probe ``pairs`` in ``jobs`` spawned worker processes (longest first). A pair is started
    once its task is prepared; tasks are prepared here while the first workers run."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    todo = sorted(pairs, key=lambda p: -_MODEL_COST.get(p[1], 1))
    prepared: dict[str, Any] = {}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(events,)
    )
    running: dict[Any, tuple[str, str]] = {}

    def submit_ready() -> None:
        for pair in list(todo):
            if len(running) >= jobs:
                return
            if pair[0] in prepared:
                todo.remove(pair)
                spec = {**job, "task": pair[0], "model": pair[1], "prepared": prepared[pair[0]]}
                running[pool.submit(_worker_probe, spec)] = pair

    def drain() -> None:
        while not events.empty():
            kind, text = events.get_nowait()
            if kind == "status":
                reporter.status(text)
            else:
                reporter.advance()

    try:
        # cheap tasks first so that workers start while the expensive ones (CT) are prepared
        for task in sorted({p[0] for p in pairs}, key=lambda t: get_task(t).modality == "ct"):
            reporter.status(f"{task}: operator norm (real tensors)")
            prepared[task] = prepare(probe_preset(task, job["image_size"], None, job["recipe"]))
            submit_ready()
            drain()
        while running:
            done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                results[running.pop(future)] = future.result()
            submit_ready()
        drain()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise
    pool.shutdown(wait=True)
    return results


_EVENTS: Any = None


def _worker_init(events: Any) -> None:
    global _EVENTS
    _EVENTS = events
    torch.set_num_threads(1)


class _QueueReporter(Reporter):
    def status(self, text: str) -> None:
        _EVENTS.put(("status", text))

    def advance(self) -> None:
        _EVENTS.put(("advance", ""))


def _worker_probe(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One (task, model) pair in a worker process."""
    kwargs = {} if spec["iterations"] is None else {"iterations": spec["iterations"]}
    oracle = SimOracle(
        spec["task"],
        spec["model"],
        allowance=Allowance(**spec["allowance"]),
        preset=probe_preset(spec["task"], spec["image_size"], spec["graph"], spec["recipe"]),
        prepared=spec["prepared"],
        **kwargs,
    )
    return probe_model(oracle, spec["capacities"], spec["cap"], _QueueReporter())


@dataclass
class Timer:
    """Wall-clock seconds since creation."""

    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
