"""The one printer of an equivalent ``luser train`` command line (quickstart, bench).

Preset settings are printed through the flag table (:data:`luser_cli.cli.flags.FLAGS`), so a
printed line reads back, through ``luser train``, into the same preset.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Flag values by Typer parameter name (``{"steps": 100, "fp_tol": 0.01}``); None leaves a flag
#: out, a switch prints its on or off form.
FlagValues = Mapping[str, Any] | Iterable[tuple[str, Any]]


def train_args(
    task: str,
    values: FlagValues = (),
    *,
    model: str | None = None,
    preset: str | Path | None = None,
    out: str | Path | None = None,
) -> list[str]:
    """``["luser", "train", "--task", task, "--preset", ..., "--model", ..., <flags>, "--out",
    ...]`` with the preset flags of ``values`` in their order (floats as ``%g`` where that reads
    back exactly, paths as given)."""
    from luser_cli.cli.flags import flag_args

    args = ["luser", "train", "--task", task]
    if preset is not None:
        args += ["--preset", str(preset)]
    if model is not None:
        args += ["--model", model]
    args += flag_args(values)
    if out is not None:
        args += ["--out", str(out)]
    return args


def train_command(task: str, values: FlagValues = (), **run: Any) -> str:
    """:func:`train_args` as one shell-quoted line."""
    return shlex.join(train_args(task, values, **run))
