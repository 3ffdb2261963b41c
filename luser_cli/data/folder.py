"""Folders of PNG / JPEG / TIFF images and NIfTI / ``.npy`` volumes (any task):
:class:`FolderDataset`, :func:`folder_files` (also used by
:func:`luser_cli.data.sources.detect_kind`), per-file :func:`unit_range` and a small LRU of
decoded volumes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from luser_cli.data.base import FileSliceDataset, Item, relative_name
from luser_cli.data.splits import select_split
from luser_cli.errors import InputError
from luser_cli.tasks import get_task

FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
FOLDER_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")


class _VolumeCache:
    """A tiny per-process LRU of decoded files (NIfTI volumes are decompressed whole)."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = max(int(capacity), 1)
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def __getstate__(self) -> dict[str, Any]:  # never ship decoded volumes to worker processes
        return {"capacity": self.capacity, "_items": OrderedDict()}


def unit_range(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Bring one file's values to ``[0, 1]``: ``(array - offset) / scale``.

    Data already in ``[0, 1]`` are kept (scale 1, offset 0); non-negative data are divided by
    their maximum (as fastMRI volumes by their ``max``); data with negative values (e.g. CT in
    Hounsfield units) are min-max normalised. Returns ``(normalised, scale, offset)``.
    """
    lo, hi = float(array.min()), float(array.max())
    if lo >= 0.0 and hi <= 1.0:
        return array, 1.0, 0.0
    offset = 0.0 if lo >= 0.0 else lo
    scale = hi - offset
    if scale <= 0.0:
        return np.zeros_like(array), 1.0, offset
    return ((array - offset) / scale).astype(np.float32), scale, offset


def folder_files(root: Path) -> list[Path]:
    """Images (PNG/JPEG/TIFF) and volumes (NIfTI, ``.npy``) under ``root``, recursively, sorted;
    hidden files and folders are skipped. ``root`` may be a single such file."""
    from luser_cli.io.images import suffix_of

    suffixes = FOLDER_IMAGE_SUFFIXES + FOLDER_VOLUME_SUFFIXES
    if root.is_file():
        return [root] if suffix_of(root) in suffixes else []
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if suffix_of(p) in suffixes:
            out.append(p)
    return out


def _slice_count(path: Path) -> int:
    """Slices in a file without reading its pixels: 1 for 2D images, Z for NIfTI / ``.npy``.
    The file's header is checked first (:func:`luser_cli.io.probe.check_input_header`), so a
    file luser cannot read is refused before training starts, not when its turn comes."""
    from luser_cli.io.images import npy_to_stack, suffix_of
    from luser_cli.io.probe import check_input_header

    check_input_header(path)
    suffix = suffix_of(path)
    if suffix in FOLDER_IMAGE_SUFFIXES:
        return 1
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable .npy file ({e})") from None
        return int(npy_to_stack(arr, str(path)).shape[0])
    import nibabel as nib

    try:
        shape = nib.load(path).shape
    except Exception as e:  # nibabel raises assorted errors for bad headers
        raise InputError(f"{path}: not a readable NIfTI file ({e})") from None
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return 1 if len(shape) == 2 else int(shape[2]) if len(shape) == 3 else 1


class FolderDataset(FileSliceDataset):
    """A folder of PNG / JPEG / TIFF images and/or NIfTI (or ``.npy``) volumes, for any task.

    Every 2D image is one item; every volume slice is one item (NIfTI slices are ``data[:, :, k]``,
    see :mod:`luser_cli.io.nifti`). Items are split 80/10/10 by a stable hash of
    ``"<file>:<slice>"`` (:func:`luser_cli.data.splits.select_split`), so slices of one volume can
    land in different splits; ``split="all"`` takes every item (a dedicated test folder).

    Intensities: images are in ``[0, 1]`` by their dtype's range (:mod:`luser_cli.io.images`);
    float images and volumes go through :func:`unit_range` per file (kept if already in
    ``[0, 1]``, else divided by the max, or min-max normalised when negative), with ``scale`` /
    ``offset`` in ``meta``. Channels follow :func:`to_task_channels` (gray -> RGB for deblur,
    luminance for CT / MRI, imag = 0 for MRI); every image is centre-cropped to a square and
    resized to ``image_size``.
    """

    def __init__(
        self,
        root: str | Path,
        task: str,
        split: str = "train",
        image_size: int | None = None,
        *,
        split_seed: int = 0,
        cache_volumes: int = 2,
    ) -> None:
        super().__init__(task, split, image_size or get_task(task).image_size, allow_all=True)
        self.root = Path(root)
        files = folder_files(self.root)
        if not files:
            raise InputError(
                f"{self.root}: holds no images (PNG/JPEG/TIFF) or volumes (NIfTI/.npy)"
            )
        base = self.root if self.root.is_dir() else self.root.parent
        names = [relative_name(p, base) for p in files]
        counts = [_slice_count(p) for p in files]
        items = [(f, s) for f in range(len(files)) for s in range(counts[f])]
        keys = [f"{names[f]}:{s}" for f, s in items]
        items = [items[i] for i in select_split(keys, self.split, split_seed)]
        used = sorted({f for f, _ in items})
        remap = {f: i for i, f in enumerate(used)}
        self.files = [files[f] for f in used]
        self.names = [names[f] for f in used]
        self._counts = [counts[f] for f in used]
        self.items = [(remap[f], s) for f, s in items]
        self._cache = _VolumeCache(cache_volumes)
        self._require_items("images")

    def _is_volume(self, file_index: int) -> bool:
        from luser_cli.io.images import suffix_of

        return suffix_of(self.files[file_index]) in FOLDER_VOLUME_SUFFIXES

    def _load(self, file_index: int) -> tuple[np.ndarray, float, float]:
        """The whole file as ``(N, C, H, W)`` in ``[0, 1]`` with its scale and offset."""
        from luser_cli.io.images import read_image_stack

        stack = read_image_stack(self.files[file_index]).images
        return unit_range(stack)

    def __getitem__(self, index: int) -> Item:
        index = self._check_index(index)
        f, s = self.items[index]
        stack, scale, offset = self._cache.get(str(self.files[f]), lambda: self._load(f))
        if s >= stack.shape[0]:
            raise InputError(
                f"{self.files[f]}: has {stack.shape[0]} slices, expected {self._counts[f]}"
            )
        return self._finish(
            stack[s], index, scale=scale, offset=offset, mask_key=(self.names[f], s)
        )
