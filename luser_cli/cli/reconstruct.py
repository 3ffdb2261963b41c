"""``luser reconstruct``: measurements (luser, fastMRI or LoDoPaB file) -> images."""

from __future__ import annotations

from pathlib import Path

import typer

from luser_cli.cli.app import app


@app.command()
def reconstruct(
    input: Path = typer.Argument(
        ...,
        help="luser measurement file, fastMRI single-coil .h5, or LoDoPaB observation_*.hdf5.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output: .png, .nii.gz, .nii, .h5 (reconstruction) or .npy."
    ),
    method: str = typer.Option(
        "model",
        "--method",
        "-m",
        help="model (the shipped model or --checkpoint), adjoint, fbp (ct), zero-filled (mri), "
        "tv, input (deblur).",
    ),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="For --method model: a run folder or checkpoint file, 'latest' (the newest run of "
        "the task under runs/) or 'builtin' (default: the model shipped with luser).",
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        "-t",
        help="mri4x or mri8x to undersample a fully sampled fastMRI file (else from the file).",
    ),
    tv_weight: float | None = typer.Option(
        None, "--tv-weight", help="Relative TV weight (tv only; default: the task's tuned value)."
    ),
    iterations: int | None = typer.Option(
        None, "--iterations", help="TV iterations (tv only; default: the task's tuned value)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Slices reconstructed at once."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Reconstruct every slice of a measurement file with a trained model or a classical method."""
    from luser_cli.reconstruct import reconstruct_file

    result = reconstruct_file(
        input,
        output,
        method,
        task=task,
        options={"tv_weight": tv_weight, "iterations": iterations, "checkpoint": checkpoint},
        device=device,
        batch_size=batch_size,
        progress=progress,
        log=lambda line: typer.echo(line, err=True),
    )
    h, w = result.image_size
    typer.echo(
        f"wrote {result.output}: {result.n} {result.task} slice(s) of {h}x{w}, "
        f"{result.method} ({result.kind} input, {result.seconds:.1f} s)"
    )
