"""``luser presets``: list (or print) the built-in task presets."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app


@app.command()
def presets(
    show: str | None = typer.Argument(
        None,
        help="Print this preset's TOML (ct, ct-paper, ...): every setting, with what the file "
        "itself states (the rest are code defaults or come from the preset it extends).",
    ),
) -> None:
    """List the shipped presets (one per task, plus the paper's recipe where a task's preset
    departs from it), or print one."""
    from rich.console import Console
    from rich.table import Table

    from luser_cli.errors import ConfigError
    from luser_cli.physics import resolve_initial
    from luser_cli.training.config import (
        PAPER_SUFFIX,
        builtin_presets,
        load_preset,
        preset_to_toml,
    )

    x0_text = {"measurement": "y", "adjoint": "A^T y", "fbp": "fbp"}

    found = builtin_presets()
    if show is not None:
        if show not in found:
            raise ConfigError(f"no preset {show!r}; built-in presets: {', '.join(found)}")
        stated = found[show].read_text(encoding="utf-8")
        typer.echo(f"# {found[show]}:\n" + "".join(f"#   {line}\n" for line in stated.splitlines()))
        typer.echo(
            f"# every setting of preset {show}:\n{preset_to_toml(load_preset(show))}", nl=False
        )
        return
    table = Table(title="built-in presets")
    for col in ("preset", "task", "image", "physics", "recipe", "train", "file"):
        table.add_column(col)
    # Each task's own preset first, then its paper-recipe variant.
    for name, path in sorted(
        found.items(), key=lambda kv: (kv[0].removesuffix(PAPER_SUFFIX), kv[0])
    ):
        p = load_preset(path)
        x0 = x0_text[resolve_initial(p.task, p.model.initial)]
        recipe = f"x0 {x0}, {p.model.data_step} steps, {p.train.loss} loss" + (
            ", aux" if p.train.aux_loss else ""
        )
        phys = ", ".join(f"{k}={v}" for k, v in p.physics.items())
        t = p.train
        per_model = "".join(f" ({m} {lr:g})" for m, lr in t.model_lr.items())
        train = f"{t.optimizer} lr {t.lr:g}{per_model} {t.scheduler}, batch {t.batch_size}, " + (
            f"{t.steps} steps" if t.steps else f"{t.epochs} epochs"
        )
        table.add_row(
            name, p.task, f"{p.image_size}x{p.image_size}", phys, recipe, train, str(path)
        )
    Console().print(table)
