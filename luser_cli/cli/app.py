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


def usage_error_line(e: Exception) -> str:
    """A Typer/Click usage error (unknown option, a bad value, a missing argument) as the one
    ``error:`` line every other user error gets, naming the flag and pointing at ``--help``."""
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "luser"
    text = " ".join(str(message).split()).rstrip(".")
    return f"error: {text} (see `{command} --help`)"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``luser`` console script and ``python -m luser_cli``."""
    try:  # typer >= 0.22 vendors click
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:  # pragma: no cover - older typer on click
        from click.exceptions import ClickException, NoArgsIsHelpError

    from luser_cli import runtime

    # Before anything imports torch: the OpenMP wait policy is read when torch loads OpenMP.
    plan = runtime.configure_process(argv)
    _register()
    runtime.apply_threads(plan)
    try:
        code = app(args=argv, prog_name="luser", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            sys.exit(code)  # typer.Exit(code) raised by a command
    except NoArgsIsHelpError as e:  # `luser` or `luser CMD` alone: the help, as before
        e.show()
        sys.exit(e.exit_code)
    except ClickException as e:  # usage errors: one line, exit 2
        typer.echo(usage_error_line(e), err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
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
