"""``luser eval``: PSNR/SSIM of a trained run and the classical baselines on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from luser_cli.cli.app import app
from luser_cli.cli.options import set_threads


@app.command("eval")
def evaluate(
    run: Path = typer.Argument(..., help="Run folder (or checkpoint file) written by luser train."),
    data: str | None = typer.Option(
        None, "--data", help="Data set folder; built-in data when omitted."
    ),
    split: str = typer.Option("test", "--split", help="test, val, train (or all for a folder)."),
    n_images: int | None = typer.Option(None, "--n", help="Evaluate at most this many images."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON here."),
    figure: Path | None = typer.Option(
        None, "--figure", help="Comparison PNG (default: RUN/comparison_<split>.png)."
    ),
    methods: str | None = typer.Option(
        None, "--methods", help="Comma-separated classical methods (default: all of the task's)."
    ),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    batch_size: int = typer.Option(4, "--batch-size", "-b", help="Images per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
) -> None:
    """Evaluate a trained run against the classical baselines (PSNR/SSIM, time, iterations)."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from luser_cli.classical.methods import check_method
    from luser_cli.errors import ConfigError
    from luser_cli.evaluation.figures import comparison_figure
    from luser_cli.evaluation.runner import Examples
    from luser_cli.evaluation.runner import evaluate as run_eval
    from luser_cli.io.atomic import atomic_write, check_writable
    from luser_cli.runs import load_trained
    from luser_cli.training.loop import resolve_device

    set_threads(threads)
    if checkpoint not in ("best", "last"):
        raise ConfigError("--checkpoint must be best or last")
    if batch_size < 1 or (n_images is not None and n_images < 1):
        raise ConfigError("--batch-size and --n must be at least 1")
    dev = resolve_device(device)
    trained = load_trained(run, dev, which=checkpoint)
    chosen = None
    if methods is not None:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        for m in chosen:
            check_method(m, trained.task)
    if json_out is not None:
        check_writable(json_out)
    run_dir = run if run.is_dir() else run.parent
    fig_path = figure if figure is not None else run_dir / f"comparison_{split}.png"
    check_writable(fig_path)
    examples = Examples()
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task_id = bar.add_task("evaluating", total=None)
        result = run_eval(
            trained,
            data=data,
            split=split,
            n_images=n_images,
            batch_size=batch_size,
            device=dev,
            methods=chosen,
            examples=examples,
            progress=lambda done, total: bar.update(task_id, completed=done, total=total),
        )
    best = result["best_classical"]
    if best is not None and examples.rows:
        comparison_figure(
            examples.rows,
            fig_path,
            classical=best,
            model_name=result["model"],
            scores=examples.psnr,
            title=f"{result['model']} vs {best} on {result['task']} ({split})",
        )
        result["figure"] = str(fig_path)
    if json_out is not None:
        with atomic_write(json_out) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = Table(
        title=f"{result['model']} on {result['task']} ({result['n_images']} {split} images)"
    )
    for col in ("method", "PSNR (dB)", "SSIM", "s / image"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, m in result["metrics"].items():
        table.add_row(
            name,
            f"{m['psnr']:.2f} ± {m['psnr_std']:.2f}",
            f"{m['ssim']:.4f} ± {m['ssim_std']:.4f}",
            f"{m['seconds_per_image']:.3f}",
        )
    Console().print(table)
    extra = result["metrics"]["model"]
    if "fp_forward_iterations_per_image" in extra:
        typer.echo(
            f"fixed-point iterations per image: {extra['fp_forward_iterations_per_image']:.1f}"
        )
    typer.echo(f"A / A^T applications per image: {extra['operator_applications_per_image']:.0f}")
    if best is not None:
        typer.echo(
            f"model - best classical ({best}): {result['model_minus_best_classical_db']:+.2f} dB"
        )
