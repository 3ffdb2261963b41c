"""``luser eval``."""

from __future__ import annotations

import typer

from luser_cli.cli.app import app
from luser_cli.errors import NotBuiltError


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate(ctx: typer.Context) -> None:
    """Evaluate a trained run against classical baselines (PSNR/SSIM). [not built yet]"""
    raise NotBuiltError("`luser eval` is not built yet: it needs trained models")
