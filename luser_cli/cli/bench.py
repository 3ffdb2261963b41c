"""``luser bench``: the paper's model comparison (Tables 2 and 4) at CPU scale."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from luser_cli.bench.settings import DEFAULTS
from luser_cli.cli.app import app
from luser_cli.cli.flags import flag_option
from luser_cli.cli.options import set_threads, sort_extras, split_values


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    task: list[str] | None = typer.Option(
        None, "--task", "-t", help="Tasks (default: deblur ct mri4x mri8x)."
    ),
    model: list[str] | None = typer.Option(
        None, "--model", "-m", help="Models (default: lu-dncnn deq4ip luser-sw luser-dw)."
    ),
    steps: int | None = flag_option(None, "steps", note=f"default {DEFAULTS.steps}"),
    image_size: int | None = flag_option(
        None, "image_size", note=f"training and test; default {DEFAULTS.image_size}"
    ),
    batch_size: int | None = flag_option(None, "batch_size", note=f"default {DEFAULTS.batch_size}"),
    eval_images: int | None = typer.Option(
        None, "--eval-images", help="Held-out built-in test images per task (default 16)."
    ),
    aux_loss: bool | None = flag_option(None, "aux_loss", note="default: the final output only"),
    both_losses: bool = typer.Option(
        False, "--both-losses", help="Run every model with both losses (paper Table 2's columns)."
    ),
    seed: int | None = flag_option(None, "seed", note=f"default {DEFAULTS.seed}"),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for the runs (default runs/bench, or runs/bench-quick)."
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Results JSON (default <out>/bench.json); .md and .png beside it."
    ),
    memprobe: str = typer.Option(
        "reuse",
        "--memprobe",
        help="24 GB batch column: reuse examples/memprobe/results.json rows, sim (run now), off.",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Smoke run: ct and mri4x, 3 models, 8 steps at 24 px (minutes)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads (default: this process's CPUs, shared under torchrun)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Reproduce the paper's model comparison (Tables 2 and 4) at CPU scale.

    Trains every model alike (same data, budget and seed), evaluates on the same held-out
    images, measure memory and cost; write JSON, a Markdown table shaped like paper Tables 2
    and 4 (the paper's numbers beside ours) and a PSNR-vs-memory plot.

    Finished cells are reused and interrupted ones resume when the same command is run again.
    """
    from rich.console import Console

    from luser_cli.bench.machine import command_line
    from luser_cli.bench.report import markdown_report, plot_report
    from luser_cli.bench.runner import BenchRun, run_bench
    from luser_cli.bench.settings import QUICK, replace_settings
    from luser_cli.io.atomic import atomic_write, check_writable

    set_threads(threads)
    tasks, models = split_values(task), split_values(model)
    sort_extras(list(ctx.args), tasks, models)
    settings = replace_settings(
        QUICK if quick else DEFAULTS,
        tasks=tasks or None,
        models=models or None,
        losses=("final", "aux") if both_losses else (("aux",) if aux_loss else None),
        steps=steps,
        image_size=image_size,
        batch_size=batch_size,
        eval_images=eval_images,
        seed=seed,
        out=out,
        device=device,
        memprobe=memprobe,
    ).check()
    json_file = json_path if json_path is not None else settings.out / "bench.json"
    md_file = json_file.with_suffix(".md")
    png_file = json_file.with_suffix(".png")
    for path in (json_file, md_file, png_file):
        check_writable(path, make_parents=True)

    console = Console(stderr=True)

    def write(run: BenchRun) -> dict:
        doc = run.as_dict()
        with atomic_write(json_file, make_parents=True) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        with atomic_write(md_file, make_parents=True) as tmp:
            tmp.write_text(markdown_report(doc), encoding="utf-8")
        return doc

    run = run_bench(
        settings,
        command=command_line(),
        progress=progress,
        log=lambda s: console.print(s, highlight=False, markup=False),
        on_cell=write,
    )
    plot_report(write(run), png_file)
    console.print(f"wrote {json_file}, {md_file}, {png_file}", highlight=False, markup=False)
