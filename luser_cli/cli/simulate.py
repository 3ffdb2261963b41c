"""``luser simulate``: an image or volume -> luser's measurement file for a task."""

from __future__ import annotations

from pathlib import Path

import typer

from luser_cli.cli.app import app


@app.command()
def simulate(
    input: Path = typer.Argument(
        ..., help="PNG, JPEG, TIFF, .npy or NIfTI (.nii/.nii.gz; every slice is simulated)."
    ),
    task: str = typer.Option(..., "--task", "-t", help="deblur, ct, mri4x or mri8x."),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Measurement file to write (.h5; see docs/measurement-format.md).",
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="Square image side in pixels (default: the input's shorter side, centre crop).",
    ),
    seed: int = typer.Option(0, "--seed", help="Noise seed (MRI masks are seeded per file/slice)."),
    physics: list[str] | None = typer.Option(
        None,
        "--physics",
        help="Override a physics setting, KEY=VALUE (repeatable), e.g. noise_std=0.02.",
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Slices simulated at once."),
) -> None:
    """Simulate a task's measurements of an image or volume and write luser's measurement file."""
    from luser_cli.simulate import parse_physics_overrides, simulate_file

    result = simulate_file(
        input,
        output,
        task=task,
        image_size=image_size,
        seed=seed,
        physics=parse_physics_overrides(physics),
        batch_size=batch_size,
    )
    shape = "x".join(str(s) for s in result.measurement_shape)
    typer.echo(
        f"wrote {result.output}: {result.n} {result.task} measurement(s) of shape {shape} "
        f"from {result.image_size}x{result.image_size} images ({result.seconds:.1f} s)"
    )
