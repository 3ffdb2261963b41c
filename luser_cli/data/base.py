"""The shared part of the ground-truth data sets: :class:`TaskImageDataset` (task layout, item
count, ``meta``), :class:`FileSliceDataset` (items are ``(file, slice)`` pairs) and small path
helpers. The data sets themselves live in ``celeba.py``, ``lodopab.py``, ``fastmri.py``,
``folder.py`` (files) and ``builtin.py`` (generated images).

Every data set returns ``(image, meta)``:

- ``image``: float32 tensor ``(C, H, W)``, ``H = W = image_size``, in the task's layout: RGB in
  ``[0, 1]`` (deblur), 1 channel in ``[0, 1]`` (CT; LoDoPaB's normalisation, 1 = 81.35858 / m), 2
  channels real/imag (MRI; the images here are real magnitudes, so imag = 0, normalised to
  ``[0, 1]``).
- ``meta``: a small dict that the default collate turns into tensors:
  ``index`` (int, the item's index in this data set), ``scale`` (float32 0-dim tensor, the
  divisor that brought the item to ``[0, 1]``: 1.0 for data already there, the volume max for
  fastMRI; original units = ``image * scale + offset``), ``offset`` (float32 0-dim tensor, 0.0
  except for files with negative values), and for MRI tasks ``mask_seed`` (int < 2^32, stable
  per file name and slice, see :func:`luser_cli.operators.masks.mask_seed`).

Measurements are not made by the data sets: the trainer simulates them per item with the task's
operator, seeded from ``meta``. Items are produced lazily in ``__getitem__`` (files are opened per
item, so the data sets are safe to use in DataLoader worker processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from luser_cli.data.splits import normalize_split
from luser_cli.data.transforms import resize_square, to_task_channels
from luser_cli.errors import ConfigError, InputError
from luser_cli.operators.masks import mask_seed
from luser_cli.tasks import TaskSpec, get_task

Item = tuple[Tensor, dict[str, Any]]


class TaskImageDataset(Dataset):
    """Common part: task layout, item count, ``meta`` and names of items."""

    task: str
    split: str
    image_size: int

    def __init__(self, task: str, split: str, image_size: int, allow_all: bool = False) -> None:
        self.task = get_task(task).name
        self.split = normalize_split(split, allow_all=allow_all)
        if int(image_size) < 4:
            raise ConfigError(f"image size must be at least 4, got {image_size}")
        self.image_size = int(image_size)

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)

    @property
    def channels(self) -> int:
        return self.spec.channels

    def __len__(self) -> int:
        raise NotImplementedError

    def item_name(self, index: int) -> str:
        """A short human-readable name of item ``index`` (file and slice, or generator seed)."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"item {index} out of range for a data set of {n} items")
        return index

    def _finish(
        self,
        image: np.ndarray,
        index: int,
        *,
        scale: float = 1.0,
        offset: float = 0.0,
        mask_key: tuple[str, int] | None = None,
    ) -> Item:
        """``(C, H, W)`` in [0, 1] -> task channels, square ``image_size``, tensor + meta."""
        image = to_task_channels(np.asarray(image, dtype=np.float32), self.task)
        image = resize_square(image, self.image_size)
        if not self.spec.complex_valued:  # resizing can overshoot [0, 1] slightly; MRI imag stays 0
            image = np.clip(image, 0.0, 1.0)
        else:
            image[0] = np.clip(image[0], 0.0, 1.0)
        meta: dict[str, Any] = {
            "index": index,
            "scale": torch.tensor(float(scale), dtype=torch.float32),
            "offset": torch.tensor(float(offset), dtype=torch.float32),
        }
        if self.spec.modality == "mri":
            name, slice_index = mask_key if mask_key is not None else (self.item_name(index), 0)
            meta["mask_seed"] = mask_seed(name, slice_index)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), meta


# File-backed data sets: a list of (file, slice) items fixed at construction, read per item.


class FileSliceDataset(TaskImageDataset):
    """Items are ``(file, slice)`` pairs over a fixed, sorted list of files.

    ``files`` are absolute paths, ``names`` their paths relative to the data root (POSIX, used in
    item names, split keys and MRI mask seeds), ``items`` the ``(file position, slice)`` pairs of
    this split.
    """

    root: Path
    files: list[Path]
    names: list[str]
    items: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.items)

    def item_key(self, index: int) -> tuple[str, int]:
        """``(file name relative to the root, slice)`` of item ``index``."""
        f, s = self.items[self._check_index(index)]
        return self.names[f], s

    def item_name(self, index: int) -> str:
        index = self._check_index(index)
        name, s = self.item_key(index)
        return f"{name}[{s}]" if self._is_volume(self.items[index][0]) else name

    def _is_volume(self, file_index: int) -> bool:
        return True

    def _require_items(self, what: str) -> None:
        if not self.items:
            where = "" if self.split == "all" else f"the {self.split} split of "
            raise InputError(f"{self.root}: {where}this folder holds no {what}")


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX), or its bare file name when not under ``root``."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def visible(path: Path) -> bool:
    """False for hidden files (names starting with ``.``)."""
    return not path.name.startswith(".")
