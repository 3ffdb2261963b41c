"""Ground-truth images for training and evaluation: built-in data and real data set folders.

- :func:`open_dataset` (``sources.py``): ``--data PATH`` -> the right data set for a task;
- ``builtin.py``: :class:`BuiltinDataset`;
- ``base.py``: :class:`TaskImageDataset` (items ``(image (C, H, W), meta)``),
  :class:`FileSliceDataset`; one module per real data set: ``celeba.py``
  (:class:`CelebADataset`), ``lodopab.py`` (:class:`LoDoPaBDataset`), ``fastmri.py``
  (:class:`FastMRIDataset`), ``folder.py`` (:class:`FolderDataset`: images / NIfTI / ``.npy``);
- ``phantoms.py``: :func:`random_ellipses`; ``photos.py``: scikit-image photo patches;
- ``splits.py``: seeded, disjoint train/val/test splits; ``transforms.py``: task layout helpers.

Names are imported lazily, so ``import luser_cli.data.transforms`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "open_dataset": "sources",
    "detect_kind": "sources",
    "BUILTIN_SIZES": "splits",
    "BuiltinDataset": "builtin",
    "CelebADataset": "celeba",
    "LoDoPaBDataset": "lodopab",
    "FastMRIDataset": "fastmri",
    "FolderDataset": "folder",
    "TaskImageDataset": "base",
    "random_ellipses": "phantoms",
    "photo_patch": "photos",
    "item_seed": "splits",
    "normalize_split": "splits",
    "SPLITS": "splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
