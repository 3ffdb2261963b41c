"""fastMRI-style k-space column masks, seeded per file and slice.

A mask samples whole k-space columns (phase-encoding lines; the last axis of fastMRI's
``kspace``). It keeps ``num_low = round(width * center_fraction)`` fully sampled centre columns,
placed exactly as fastMRI's ``RandomMaskFunc`` places them (``mask[pad : pad + num_low]`` with
``pad = (width - num_low + 1) // 2``, around the DC column ``width // 2`` of the centred
spectrum), and draws the other columns at random.

Two ways of drawing the outer columns:

- ``exact=True`` (the default): exactly ``round(width / acceleration) - num_low`` outer columns,
  uniformly at random without replacement, so every mask samples ``round(width / acceleration)``
  columns and hits the requested acceleration up to that rounding (368 columns at 4x: 92
  columns, acceleration exactly 4.0). This is our default because per-slice acceleration then
  does not fluctuate, and a "4x" result always means 4x.
- ``exact=False``: fastMRI's ``RandomMaskFunc`` rule: each outer column independently with
  probability ``(width / acceleration - num_low) / (width - num_low)``, so the acceleration is
  hit only in expectation (368 columns at 4x: 92 +- 7 columns, i.e. roughly 3.7x to 4.4x).
  The draws come from NumPy's ``default_rng(seed)``, so masks are not bit-identical to fastMRI's
  (which seeds the legacy global ``np.random``); the distribution is the same.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePath

import numpy as np
import torch
from torch import Tensor

from luser_cli.errors import ConfigError


def num_low_frequencies(width: int, center_fraction: float) -> int:
    """Number of fully sampled centre columns, ``round(width * center_fraction)`` as in fastMRI
    (Python's round-half-to-even)."""
    return round(width * center_fraction)


def center_slice(width: int, num_low: int) -> slice:
    """The centre columns fastMRI keeps: ``[pad, pad + num_low)`` with
    ``pad = (width - num_low + 1) // 2``; it always contains the DC column ``width // 2``."""
    pad = (width - num_low + 1) // 2
    return slice(pad, pad + num_low)


def random_column_mask(
    width: int,
    acceleration: float,
    center_fraction: float,
    seed: int,
    *,
    exact: bool = True,
) -> Tensor:
    """A random column mask: bool ``(width,)``, True where a k-space column is sampled.

    Args:
        width: number of k-space columns ``W_k``.
        acceleration: requested undersampling factor (``width / sampled columns``), >= 1.
        center_fraction: fraction of columns kept fully sampled at the centre, in (0, 1].
        seed: integer seed (see :func:`mask_seed`); the same arguments give the same mask.
        exact: sample exactly ``round(width / acceleration)`` columns (default) instead of
            fastMRI's independent draws that hit the acceleration only in expectation.

    Raises:
        ConfigError: for a non-positive width, an acceleration below 1, a centre fraction
            outside (0, 1], or centre columns that alone exceed ``width / acceleration``.
    """
    width = int(width)
    if width < 1:
        raise ConfigError(f"mask width must be at least 1, got {width}")
    if not acceleration >= 1:
        raise ConfigError(f"acceleration must be >= 1, got {acceleration}")
    if not 0 < center_fraction <= 1:
        raise ConfigError(f"center_fraction must be in (0, 1], got {center_fraction}")
    num_low = num_low_frequencies(width, center_fraction)
    target = max(round(width / acceleration), 1)
    if num_low > target:
        raise ConfigError(
            f"center_fraction {center_fraction} keeps {num_low} of {width} columns, more than "
            f"width / acceleration = {width / acceleration:g}; lower center_fraction or "
            "acceleration"
        )
    rng = np.random.default_rng(int(seed) & 0xFFFFFFFFFFFFFFFF)
    centre = center_slice(width, num_low)
    mask = np.zeros(width, dtype=bool)
    if exact:
        outer = np.concatenate([np.arange(0, centre.start), np.arange(centre.stop, width)])
        mask[rng.choice(outer, size=target - num_low, replace=False)] = True
    elif num_low < width:
        prob = (width / acceleration - num_low) / (width - num_low)
        mask = rng.random(width) < prob
    mask[centre] = True
    return torch.from_numpy(mask)


def mask_seed(name: str, index: int) -> int:
    """A stable 32-bit seed for slice ``index`` of file ``name``.

    Only the file's base name is used (``/data/file1000001.h5`` and ``file1000001.h5`` give the
    same seed), hashed with SHA-256, so the seed is the same in every process and on every
    machine (unlike Python's salted ``hash``).
    """
    key = f"{PurePath(str(name)).name}:{int(index)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def acceleration_of(mask: Tensor) -> float:
    """Achieved acceleration ``width / sampled columns`` of a ``(width,)`` mask (inf if empty)."""
    m = torch.as_tensor(mask).reshape(-1) != 0
    n = int(m.sum())
    return float("inf") if n == 0 else m.numel() / n


def center_fraction_of(mask: Tensor) -> float:
    """Fraction of columns in the contiguous sampled run around the DC column ``width // 2``.

    Random outer columns next to the fully sampled block lengthen the run, so this is an upper
    bound on (usually equal to) the ``center_fraction`` the mask was drawn with; 0 when the DC
    column is not sampled.
    """
    m = (torch.as_tensor(mask).reshape(-1) != 0).tolist()
    width = len(m)
    dc = width // 2
    if width == 0 or not m[dc]:
        return 0.0
    lo, hi = dc, dc
    while lo > 0 and m[lo - 1]:
        lo -= 1
    while hi < width - 1 and m[hi + 1]:
        hi += 1
    return (hi - lo + 1) / width
