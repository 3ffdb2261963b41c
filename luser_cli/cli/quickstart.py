"""``luser quickstart``: the README's main job in one command."""

from __future__ import annotations

from pathlib import Path

import typer

from luser_cli.cli.app import app
from luser_cli.cli.flags import flag_option
from luser_cli.cli.options import set_threads
from luser_cli.quickstart import QuickstartSettings

#: The README's job: its class attributes are the field defaults, the options' defaults below.
_DEFAULT = QuickstartSettings


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", "-o", help="Output folder."),
    task: str = typer.Option(_DEFAULT.task, "--task", "-t", help="deblur, ct, mri4x or mri8x."),
    model: str = typer.Option(_DEFAULT.model, "--model", "-m", help="Model to train."),
    image_size: int = flag_option(_DEFAULT.image_size, "image_size"),
    steps: int = flag_option(_DEFAULT.steps, "steps"),
    batch_size: int = flag_option(_DEFAULT.batch_size, "batch_size", "-b"),
    lr: float | None = flag_option(None, "lr", note="default: the task preset's, per model"),
    initial: str | None = flag_option(None, "initial", note="default: the task preset's"),
    data_step: str | None = flag_option(None, "data_step", note="default: the task preset's"),
    loss: str = flag_option(_DEFAULT.loss, "loss"),
    tol: float | None = typer.Option(
        _DEFAULT.tol,
        "--tol",
        help="Forward and backward fixed-point tolerance (looser than the preset's, which "
        "keeps the late steps cheap).",
    ),
    eval_images: int = typer.Option(
        _DEFAULT.eval_images, "--eval-images", help="Held-out images to evaluate on."
    ),
    seed: int = flag_option(_DEFAULT.seed, "seed"),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Train LUSER-DW on built-in data, evaluate it against the classical baselines, and
    reconstruct a held-out sample: the whole workflow on a fresh machine, offline."""
    from luser_cli.errors import ConfigError
    from luser_cli.models.registry import check_model_name
    from luser_cli.quickstart import run_quickstart
    from luser_cli.tasks import get_task

    get_task(task)
    check_model_name(model)
    if min(steps, batch_size, eval_images) < 1:
        raise ConfigError("--steps, --batch-size and --eval-images must be at least 1")
    set_threads(threads)
    if (out / "run" / "checkpoint_last.pt").exists():
        raise ConfigError(f"{out} already holds a quickstart run; choose another --out")
    settings = QuickstartSettings(
        task=task,
        model=model,
        image_size=image_size,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        eval_images=eval_images,
        seed=seed,
        initial=initial,
        data_step=data_step,
        loss=loss,
        tol=tol,
    )
    s = run_quickstart(out, settings, progress=progress, log=lambda m: typer.echo(m, err=True))
    e = s["eval"]
    typer.echo(
        f"{model} on {e['n_images']} held-out built-in {task} images: "
        f"PSNR {e['model_psnr']:.2f} dB vs {e['best_classical']} {e['best_classical_psnr']:.2f} dB "
        f"({e['model_minus_best_classical_db']:+.2f} dB); SSIM {e['model_ssim']:.3f}"
    )
    typer.echo(
        f"total {s['seconds']['total'] / 60:.1f} min "
        f"(training {s['seconds']['train'] / 60:.1f} min); "
        f"results in {out}: eval.json, comparison.png, run/training_curve.png, "
        f"sample_recon.png"
    )
