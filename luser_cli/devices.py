"""The one rule that turns a ``--device`` string into a :class:`torch.device`."""

from __future__ import annotations

import torch

from luser_cli.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else the CPU; ``cpu``; ``cuda`` or
    ``cuda:N`` (N below the number of visible GPUs). Anything else, or CUDA without a GPU, is a
    one-line :class:`~luser_cli.errors.ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available (use --device cpu)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            count = torch.cuda.device_count()
            raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s)")
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
