"""``luser bench``."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app
from luser_cli.errors import NotBuiltError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Reproduce the paper's model comparison at CPU scale. [not built yet]"""
    raise NotBuiltError("`luser bench` is not built yet: it needs training and evaluation")
