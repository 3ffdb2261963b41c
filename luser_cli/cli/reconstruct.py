"""``luser reconstruct``."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app
from luser_cli.errors import NotBuiltError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def reconstruct(ctx: typer.Context) -> None:
    """[not built yet]"""
    raise NotBuiltError("`luser reconstruct` is not built yet")
