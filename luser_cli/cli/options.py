"""Helpers shared by several commands."""

from __future__ import annotations

import torch


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op CPU threads. ``None`` keeps the start-up default
    (:mod:`luser_cli.runtime`: the CPUs this process may use, shared under torchrun)."""
    if threads is not None:
        if threads < 1:
            from luser_cli.errors import ConfigError

            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(threads)


def split_values(values: list[str] | None) -> list[str]:
    """Values of a repeatable list option, also split at commas and spaces."""
    out: list[str] = []
    for v in values or []:
        out += [p for p in v.replace(",", " ").split() if p]
    return out


def sort_extras(
    extras: list[str], tasks: list[str], models: list[str], numbers: list[str] | None = None
) -> None:
    """Values listed after a list flag without repeating it land in ``ctx.args``; their domains
    (task names, model names, and numbers where ``numbers`` is given) do not overlap, so each
    goes back to its flag."""
    from luser_cli.errors import ConfigError
    from luser_cli.models.registry import MODEL_NAMES
    from luser_cli.tasks import TASK_NAMES

    for part in split_values(extras):
        if part in TASK_NAMES:
            tasks.append(part)
        elif part in MODEL_NAMES:
            models.append(part)
        elif numbers is not None and _is_number(part):
            numbers.append(part)
        else:
            kinds = (
                "a task, a model or a number of GB" if numbers is not None else "a task or a model"
            )
            raise ConfigError(f"unexpected argument {part!r} (not {kinds})")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
