"""``luser train``."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app
from luser_cli.errors import NotBuiltError


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Train a model (lu-dncnn, deq4ip, luser-sw, luser-dw) for a task. [not built yet]"""
    raise NotBuiltError("`luser train` is not built yet: models and the training loop come next")
