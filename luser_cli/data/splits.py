"""Seeded, reproducible train / validation / test splits.

Two kinds of split are used:

- **generated data** (ellipse phantoms, photo patches): item ``i`` of a split gets the integer
  seed :func:`item_seed`, taken from a range reserved for that split inside the block of the base
  seed, so no two items of different splits ever share a seed, whatever base seeds are used;
- **files** (CelebA without a partition file, folders of images / NIfTI volumes): each item's key
  (file name, or file name + slice) is hashed with SHA-256 (never Python's salted ``hash``) to a
  number in ``[0, 1)``; items sorted by that number are cut 80 / 10 / 10 (validation and test get
  at least one item each once there are 3 items). The three splits partition the items and do
  not depend on the file order or the machine.

Real-data splits take a ``split_seed`` that defaults to 0 and is deliberately *not* the training
seed: evaluating a run with another ``--seed`` must not move training images into the test split.
"""

from __future__ import annotations

import hashlib

from luser_cli.errors import ConfigError

#: Built-in items per split when no size is given; the defaults of the presets' ``[data]``
#: ``train_size`` / ``val_size`` / ``test_size`` (:class:`luser_cli.training.config.DataSettings`).
BUILTIN_SIZES = {"train": 4096, "val": 16, "test": 32}

SPLITS: tuple[str, ...] = ("train", "val", "test")
_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)

# Generated-data seeds: base seed b owns [b * 2^32, (b + 1) * 2^32); inside it train items use
# offsets [0, 2^31), validation [2^31, 2^31 + 2^30), test [2^31 + 2^30, 2^32).
_BLOCK = 1 << 32
_OFFSET = {"train": 0, "val": 1 << 31, "test": (1 << 31) + (1 << 30)}
_CAPACITY = {"train": 1 << 31, "val": 1 << 30, "test": 1 << 30}


def normalize_split(split: str, allow_all: bool = False) -> str:
    """``train`` / ``val`` / ``test`` (also accepts ``validation``, ``valid``, ``training``).

    With ``allow_all``, ``all`` (every item of a folder, e.g. a dedicated test folder) is valid too.
    """
    key = str(split).strip().lower()
    if allow_all and key == "all":
        return "all"
    if key not in _ALIASES:
        names = (*SPLITS, "all") if allow_all else SPLITS
        raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(names)}")
    return _ALIASES[key]


def item_seed(base_seed: int, split: str, index: int) -> int:
    """The integer seed of generated item ``index`` of ``split`` (non-negative, < 2^63).

    Seeds of different splits never coincide, for any pair of base seeds.
    """
    split = normalize_split(split)
    if base_seed < 0 or base_seed >= 1 << 31:
        raise ConfigError(f"seed must be in [0, 2^31), got {base_seed}")
    if not 0 <= index < _CAPACITY[split]:
        raise ConfigError(f"item index {index} out of range for the {split} split")
    return base_seed * _BLOCK + _OFFSET[split] + index


def split_of_seed(seed: int) -> str:
    """The split a seed from :func:`item_seed` belongs to (for checks and tests)."""
    offset = seed % _BLOCK
    if offset >= _OFFSET["test"]:
        return "test"
    return "val" if offset >= _OFFSET["val"] else "train"


def stable_unit(key: str, split_seed: int = 0) -> float:
    """A number in ``[0, 1)`` from SHA-256 of ``"<split_seed>:<key>"``; the same on every run."""
    digest = hashlib.sha256(f"{split_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_counts(
    n: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> dict[str, int]:
    """How many of ``n`` items go to each split: validation and test get ``round(f * n)`` but at
    least one item each once ``n >= 3``; train gets the rest."""
    _, f_val, f_test = fractions
    if n < 3:
        return {"train": n, "val": 0, "test": 0}
    n_val = min(max(1, round(f_val * n)) if f_val > 0 else 0, n)
    n_test = min(max(1, round(f_test * n)) if f_test > 0 else 0, n - n_val)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def select_split(
    keys: list[str],
    split: str,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> list[int]:
    """Positions in ``keys`` (unique strings) that fall in ``split`` (or all, for ``"all"``),
    in their original order.

    The keys are ranked by :func:`stable_unit`; the lowest ranks go to train, then validation,
    then test, in the sizes of :func:`split_counts`. The three results partition ``keys``.
    """
    split = normalize_split(split, allow_all=True)
    if split == "all":
        return list(range(len(keys)))
    counts = split_counts(len(keys), fractions)
    ranked = sorted(range(len(keys)), key=lambda i: (stable_unit(keys[i], split_seed), keys[i]))
    start = {"train": 0, "val": counts["train"], "test": counts["train"] + counts["val"]}[split]
    chosen = ranked[start : start + counts[split]]
    return sorted(chosen)
