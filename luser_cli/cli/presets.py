"""``luser presets``: list (or print) the built-in task presets."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app


@app.command()
def presets(
    show: str | None = typer.Argument(None, help="Print this task's preset TOML."),
) -> None:
    """List the built-in task presets, or print one."""
    from rich.console import Console
    from rich.table import Table

    from luser_cli.errors import ConfigError
    from luser_cli.training.config import builtin_presets, load_preset

    found = builtin_presets()
    if show is not None:
        if show not in found:
            raise ConfigError(f"no preset {show!r}; built-in presets: {', '.join(found)}")
        typer.echo(found[show].read_text(encoding="utf-8"), nl=False)
        return
    table = Table(title="built-in presets")
    for col in ("task", "image", "physics", "train", "file"):
        table.add_column(col)
    for name, path in found.items():
        p = load_preset(path)
        phys = ", ".join(f"{k}={v}" for k, v in p.physics.items())
        t = p.train
        train = f"{t.optimizer} lr {t.lr:g}, batch {t.batch_size}, " + (
            f"{t.steps} steps" if t.steps else f"{t.epochs} epochs"
        )
        table.add_row(name, f"{p.image_size}x{p.image_size}", phys, train, str(path))
    Console().print(table)
