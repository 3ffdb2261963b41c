"""The one printer of an equivalent ``luser train`` command line (quickstart, bench)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

#: A flag and its value: ``True`` is a bare switch, ``None`` / ``False`` leave the flag out.
Flag = tuple[str, object]


def _value(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def train_args(task: str, flags: Sequence[Flag]) -> list[str]:
    """``["luser", "train", "--task", task, ...]`` with ``flags`` in order (floats as ``%g``,
    paths as given)."""
    args = ["luser", "train", "--task", task]
    for name, value in flags:
        if value is None or value is False:
            continue
        args += [name] if value is True else [name, _value(value)]
    return args


def train_command(task: str, flags: Sequence[Flag]) -> str:
    """:func:`train_args` as one shell-quoted line."""
    return shlex.join(train_args(task, flags))
