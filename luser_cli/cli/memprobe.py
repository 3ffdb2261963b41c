"""``luser memprobe``: the largest training batch that fits a GPU of N GB (real or simulated)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from luser_cli.cli.app import app
from luser_cli.cli.flags import flag_option
from luser_cli.cli.options import set_threads, sort_extras, split_values

_HELP_TAIL = (
    "Several values may follow one flag (--gpu-gb 8 10 24 --task ct deblur) or the flag may be "
    "repeated; commas work too."
)


def _gb(text: str) -> float:
    from luser_cli.errors import ConfigError

    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--gpu-gb must be a number of GB, got {text!r}") from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def memprobe(
    ctx: typer.Context,
    gpu_gb: list[str] | None = typer.Option(
        None, "--gpu-gb", "-g", help="GPU capacities in GB, i.e. GiB (default: 8 10 24)."
    ),
    task: list[str] | None = typer.Option(
        None, "--task", "-t", help="Tasks (default: deblur ct mri4x)."
    ),
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="Models (default: lu-dncnn deq4ip luser-sw luser-dw)."
    ),
    image_size: int | None = flag_option(None, "image_size", note="default: each task preset's"),
    backend: str = typer.Option(
        "auto", "--backend", help="auto (cuda if a GPU is present, else sim), sim or cuda."
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Write the rows (and how they were made) to this JSON file."
    ),
    markdown_path: Path | None = typer.Option(
        None, "--markdown", help="Write the table as Markdown (with the command and machine)."
    ),
    context_gb: float = typer.Option(
        0.5, "--context-gb", help="sim and cuda: GB a card loses to the CUDA context."
    ),
    fragmentation: float = typer.Option(
        0.10,
        "--fragmentation",
        help="sim: extra fraction for caching-allocator fragmentation (0.10 = 10 %).",
    ),
    fp_graph: str | None = flag_option(None, "fp_graph", note="default: the preset's"),
    recipe: str = typer.Option(
        "shipped",
        "--recipe",
        help="shipped: each task's preset, what `luser train` trains; paper: the paper's recipe "
        "(ct-paper for CT: A^T y start, gradient steps), as Table 3 measured.",
    ),
    cap: int = typer.Option(4096, "--cap", help="Largest batch size searched."),
    iterations: int = typer.Option(
        1,
        "--iterations",
        help="sim: fixed-point iterations per solve (the peak does not depend on it).",
    ),
    paper: bool = typer.Option(
        True, "--paper/--no-paper", help="Show paper Table 3's numbers beside ours."
    ),
    paper_rounding: bool = typer.Option(
        False,
        "--paper-rounding",
        help="Round our numbers as the paper does (largest even number, except 1).",
    ),
    jobs: int | None = typer.Option(
        None, "--jobs", "-j", help="sim: worker processes (default: one per CPU core)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads per process (default: the CPUs this process may use)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
) -> None:
    """Largest training batch that fits a GPU of N GB, per task and model (paper Table 3).

    A binary search over the batch size; each probe runs one full training step of the model
    `luser train` builds (forward, loss, backward, optimiser step).

    cuda: on the GPU itself, capped at N GB. sim (any machine): on fake tensors, counting every
    tensor's bytes, plus a stated allowance for the CUDA context and allocator.
    """
    from rich.console import Console

    from luser_cli.bench.machine import command_line, machine_info
    from luser_cli.errors import ConfigError
    from luser_cli.memprobe.allowance import Allowance
    from luser_cli.memprobe.probe import (
        DEFAULT_CAPACITIES_GB,
        DEFAULT_TASKS,
        Timer,
        check_request,
        default_jobs,
        resolve_backend,
        run_probe,
    )
    from luser_cli.memprobe.table import rich_table
    from luser_cli.models.registry import MODEL_NAMES
    from luser_cli.solvers.config import FP_GRAPHS, EquilibriumConfig

    set_threads(threads)
    tasks, models, gbs = split_values(task), split_values(model), split_values(gpu_gb)
    sort_extras(list(ctx.args), tasks, models, gbs)
    capacities = [_gb(g) for g in gbs] or list(DEFAULT_CAPACITIES_GB)
    tasks = list(dict.fromkeys(tasks)) or list(DEFAULT_TASKS)
    models = list(dict.fromkeys(models)) or list(MODEL_NAMES)
    capacities = list(dict.fromkeys(capacities))
    if image_size is not None and image_size < 8:
        raise ConfigError(f"--image-size must be at least 8, got {image_size}")
    if iterations < 1:
        raise ConfigError(f"--iterations must be at least 1, got {iterations}")
    check_request(tasks, models, capacities, cap)
    if fp_graph is not None and fp_graph not in FP_GRAPHS:
        raise ConfigError(f"--fp-graph must be one of {', '.join(FP_GRAPHS)}, got {fp_graph!r}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    allowance = Allowance(context_gb=context_gb, fragmentation=fragmentation)
    chosen = resolve_backend(backend)
    n_jobs = jobs if jobs is not None else default_jobs(chosen, len(tasks) * len(models))
    for path in (json_path, markdown_path):
        if path is not None:
            from luser_cli.io.atomic import check_writable

            check_writable(path)

    console = Console(stderr=True)
    load_start = machine_info().get("load_average")
    timer = Timer()
    reporter = _RichReporter(console) if progress else None
    try:
        rows = run_probe(
            tasks,
            models,
            capacities,
            image_size=image_size,
            backend=chosen,
            allowance=allowance,
            cap=cap,
            iterations=iterations,
            jobs=n_jobs,
            reporter=reporter,
            graph=fp_graph,
            recipe=recipe,
        )
    finally:
        if reporter is not None:
            reporter.stop()
    elapsed = timer.seconds
    # a terminal gets its own width; files and pipes get the whole table, unwrapped
    out = Console() if sys.stdout.isatty() else Console(width=200)
    out.print(rich_table(rows, paper=paper, rounding=paper_rounding))
    console.print(f"[dim]{len(rows)} entries in {elapsed:.1f} s ({chosen} backend)[/dim]")

    machine = machine_info()
    if "load_average" in machine:
        machine["load_average_start"] = load_start
        machine["load_average_end"] = machine.pop("load_average")
    meta = {
        "command": command_line(default="luser memprobe"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "backend": chosen,
        "allowance": allowance.as_dict() if chosen == "sim" else {"context_gb": context_gb},
        "fixed_point_iterations": iterations if chosen == "sim" else None,
        "fp_graph": fp_graph or EquilibriumConfig().graph,
        "recipe": recipe,
        "jobs": n_jobs,
        "elapsed_s": round(elapsed, 1),
        "cpu_s": _cpu_seconds(),
    }
    if json_path is not None:
        _write_text(json_path, json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    if markdown_path is not None:
        _write_text(markdown_path, _markdown_document(meta, rows, paper, paper_rounding))


def _cpu_seconds() -> float | None:
    """User + system CPU seconds of this process and its finished workers (POSIX)."""
    try:
        import resource
    except ImportError:
        return None
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return round(total, 1)


def _markdown_document(
    meta: dict[str, Any], rows: list[dict[str, Any]], paper: bool, rounding: bool
) -> str:
    from luser_cli.memprobe.table import markdown_table

    m = meta["machine"]
    lines = [
        "# luser memprobe: max training batch per GPU capacity",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}",
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, Python {m.get('python')}, "
        f"torch {m.get('torch')}" + (f", GPU {m['gpu']}" if "gpu" in m else ""),
        f"- backend: {meta['backend']}; allowance: "
        + ", ".join(f"{k} = {v}" for k, v in meta["allowance"].items()),
        f"- equilibrium layers (DEQ4IP, LUSER) for backward: `--fp-graph {meta['fp_graph']}`",
        f"- presets: `--recipe {meta['recipe']}`",
        f"- time: {meta['elapsed_s']} s wall, {meta['cpu_s']} s CPU, {meta['jobs']} worker(s)"
        + (
            f" (1/5/15-min load average at start {m['load_average_start']}, "
            f"at end {m['load_average_end']})"
            if "load_average_end" in m
            else ""
        ),
        "",
        markdown_table(rows, paper=paper, rounding=rounding),
    ]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    from luser_cli.io.atomic import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


class _RichReporter:
    """A rich progress bar over the (task, model, capacity) entries."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task = None

    def start(self, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("memprobe", total=total)

    def status(self, text: str) -> None:
        if self._task is not None:
            self._progress.update(self._task, description=text)

    def advance(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)

    def stop(self) -> None:
        self._progress.stop()
