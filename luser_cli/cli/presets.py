"""``luser presets``."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app
from luser_cli.errors import NotBuiltError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def presets(ctx: typer.Context) -> None:
    """List the built-in task presets. [not built yet]"""
    raise NotBuiltError("`luser presets` is not built yet")
