"""``luser eval``: PSNR/SSIM of a trained run and the classical baselines on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from luser_cli.cli.app import app
from luser_cli.cli.options import set_threads


@app.command("eval")
def evaluate(
    run: str = typer.Argument(
        ...,
        help="Run folder or checkpoint file written by luser train, 'builtin' (the model shipped "
        "with luser for --task) or 'latest' (the newest run of --task under runs/).",
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        "-t",
        help="The task, for 'builtin' and 'latest' (deblur, ct, mri4x, mri8x).",
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Evaluate at this image side (default: the training size)."
    ),
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
    probe: bool = typer.Option(
        True,
        "--probe/--no-probe",
        help="Equilibrium models: per stage, the Jacobian's spectral radius at the fixed point "
        "and forward/backward iterations, on 2 images (one forward and backward pass more).",
    ),
) -> None:
    """Evaluate a trained run against the classical baselines (PSNR/SSIM, time, iterations)."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from luser_cli.classical.methods import check_method
    from luser_cli.devices import resolve_device
    from luser_cli.errors import ConfigError
    from luser_cli.evaluation.figures import comparison_figure
    from luser_cli.evaluation.runner import Examples
    from luser_cli.evaluation.runner import evaluate as run_eval
    from luser_cli.io.atomic import atomic_write
    from luser_cli.run_files import check_user_output
    from luser_cli.runs import load_trained
    from luser_cli.shipped import BUILTIN, LATEST, resolve_model
    from luser_cli.tasks import get_task

    set_threads(threads)
    if checkpoint not in ("best", "last"):
        raise ConfigError("--checkpoint must be best or last")
    if batch_size < 1 or (n_images is not None and n_images < 1):
        raise ConfigError("--batch-size and --n must be at least 1")
    dev = resolve_device(device)
    if image_size is not None and not 8 <= image_size <= 4096:
        raise ConfigError(f"--image-size must be between 8 and 4096, got {image_size}")
    named = run in (BUILTIN, LATEST)
    if named and task is None:
        raise ConfigError(f"luser eval {run} needs --task (deblur, ct, mri4x or mri8x)")
    ref = resolve_model(run, task) if named else None
    trained = load_trained(ref.path if ref else Path(run), dev, which=checkpoint)
    if task is not None and trained.task != get_task(task).name:
        raise ConfigError(f"{run} holds a model for task {trained.task!r}, not {task!r}")
    chosen = None
    if methods is not None:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        for m in chosen:
            check_method(m, trained.task)
    protected = [trained.path] + ([Path(data)] if data else [])  # inputs: never overwritten
    if json_out is not None:
        check_user_output(json_out, protected)
    if ref is not None and ref.shipped:  # never write into the installed package
        default_fig = Path(f"comparison_{trained.task}_builtin_{split}.png")
    else:
        run_path = Path(run) if ref is None else ref.path
        run_dir = run_path if run_path.is_dir() else run_path.parent
        default_fig = run_dir / f"comparison_{split}.png"
    fig_path = figure if figure is not None else default_fig
    check_user_output(fig_path, protected)
    if json_out is not None and Path(json_out).resolve() == Path(fig_path).resolve():
        raise ConfigError(f"--json and --figure name the same file {json_out}")
    examples = Examples()
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task_id = bar.add_task("evaluating", total=None)
        result = run_eval(
            trained,
            data=data,
            split=split,
            image_size=image_size,
            n_images=n_images,
            batch_size=batch_size,
            device=dev,
            methods=chosen,
            examples=examples,
            progress=lambda done, total: bar.update(task_id, completed=done, total=total),
            equilibria=probe,
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
    from luser_cli.cli.info import print_equilibrium_facts

    print_equilibrium_facts(result)
    if best is not None:
        typer.echo(
            f"model - best classical ({best}): {result['model_minus_best_classical_db']:+.2f} dB"
        )
