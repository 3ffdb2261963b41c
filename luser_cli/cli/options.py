"""Helpers shared by several commands."""

from __future__ import annotations

import torch


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op CPU threads (all cores by default)."""
    if threads is not None:
        if threads < 1:
            from luser_cli.errors import ConfigError

            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(threads)
