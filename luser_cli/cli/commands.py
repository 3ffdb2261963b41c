"""Imports every command module so that each registers itself on the Typer app."""

from luser_cli.cli import (  # noqa: F401
    bench,
    evaluate,
    info,
    memprobe,
    presets,
    quickstart,
    reconstruct,
    simulate,
    train,
)
