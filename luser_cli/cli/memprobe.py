"""``luser memprobe``."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app
from luser_cli.errors import NotBuiltError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def memprobe(ctx: typer.Context) -> None:
    """Largest training batch that fits a GPU of N GB (real CUDA or simulated). [not built yet]"""
    raise NotBuiltError("`luser memprobe` is not built yet: it needs the models")
