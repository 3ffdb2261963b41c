"""The ``luser`` command line: parses, validates, and calls the library.

Each command lives in its own module under :mod:`luser_cli.cli`; this file only registers them
and turns user errors into one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import os
import sys

import typer

from luser_cli import __version__
from luser_cli.errors import LuserError

app = typer.Typer(
    name="luser",
    help=(
        "Learned reconstruction for imaging inverse problems (deblurring, CT, accelerated MRI): "
        "LUSER loop-unrolled shallow equilibrium regularisers and the LU-DnCNN / DEQ4IP baselines."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"luser {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """luser: train, evaluate and run learned reconstruction networks."""


def _register() -> None:
    from luser_cli.cli import commands  # noqa: F401  (registers every command on `app`)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``luser`` console script and ``python -m luser_cli``."""
    _register()
    try:
        app(args=argv, prog_name="luser", standalone_mode=True)
    except LuserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: still one line, traceback on request
        if os.environ.get("LUSER_DEBUG"):
            raise
        typer.echo(
            f"internal error: {type(e).__name__}: {e} (set LUSER_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(1)
