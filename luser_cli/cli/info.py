"""``luser info``."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app
from luser_cli.errors import NotBuiltError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def info(ctx: typer.Context) -> None:
    """Parameter count, architecture and solver settings of a model. [not built yet]"""
    raise NotBuiltError("`luser info` is not built yet: it needs the models")
