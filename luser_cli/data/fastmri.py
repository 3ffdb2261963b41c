"""fastMRI single-coil targets (MRI): :class:`FastMRIDataset` and its per-volume splits
(:func:`fastmri_split_files`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from luser_cli.data.base import FileSliceDataset, Item, relative_name, visible
from luser_cli.data.splits import select_split
from luser_cli.errors import ConfigError, InputError
from luser_cli.tasks import get_task

FASTMRI_FOLDERS = {"train": "singlecoil_train", "val": "singlecoil_val", "test": "singlecoil_test"}
_H5_SUFFIXES = (".h5", ".hdf5")


def _h5_files(folder: Path) -> list[Path]:
    files = (p for p in folder.iterdir() if p.suffix.lower() in _H5_SUFFIXES and visible(p))
    return sorted(p for p in files if p.is_file())


def fastmri_split_files(root: Path, split: str, split_seed: int = 0) -> tuple[list[Path], str]:
    """The ``.h5`` files of ``split`` and how they were chosen (for messages).

    - ``root`` with ``singlecoil_train/`` and/or ``singlecoil_val/``: train = ``singlecoil_train``;
      val and test = the two halves of ``singlecoil_val`` by a stable hash of the file name
      (fastMRI's own test files have no targets, so papers test on the validation volumes);
    - a folder of ``.h5`` files (e.g. ``singlecoil_val`` itself), or one file: split by file
      (volume) 80/10/10 by stable hash when there are >= 3 files, so slices of one knee never
      straddle two splits.

    With too few volumes to split by volume (fewer than 2 validation volumes for val/test, fewer
    than 3 files in a plain folder), :class:`FastMRIDataset` splits their slices instead; ``how``
    says which case applies: ``"layout"``, ``"layout-slices"``, ``"folder"`` or ``"file"``.
    """
    if root.is_file():
        return [root], "file"
    sub = {k: root / v for k, v in FASTMRI_FOLDERS.items()}
    if sub["train"].is_dir() or sub["val"].is_dir():
        train = _h5_files(sub["train"]) if sub["train"].is_dir() else []
        val = _h5_files(sub["val"]) if sub["val"].is_dir() else []
        if split == "all":
            return train + val, "layout"
        if split == "train":
            return train, "layout"
        if len(val) < 2:
            return val, "layout-slices"
        names = [p.name for p in val]
        half = select_split(names, "train", split_seed, (0.5, 0.0, 0.5))
        pick = half if split == "val" else sorted(set(range(len(val))) - set(half))
        return [val[i] for i in pick], "layout"
    files = _h5_files(root)
    return files, "folder"


class FastMRIDataset(FileSliceDataset):
    """fastMRI single-coil targets for MRI: ``(2, image_size, image_size)``, real in ``[0, 1]``.

    ``root``: a fastMRI folder with ``singlecoil_train/`` / ``singlecoil_val/``, a folder of
    ``.h5`` files, or one ``.h5`` file (see :func:`fastmri_split_files` for the splits). With
    fewer than 3 volumes in a plain folder the split is made per slice instead (80/10/10 by a
    stable hash of ``file:slice``), so a one-file folder still has train/val/test items; likewise
    a single ``singlecoil_val`` volume is halved per slice into val and test.

    Each target is the ``reconstruction_esc`` slice (or, for fully sampled files without it,
    ``|centre-crop(ifft2c(kspace))|`` as fastMRI defines it) divided by its *volume's* max (the
    ``max`` attribute when present, else computed once): real = that normalised magnitude,
    imag = 0. ``scale`` = the volume max, so ``image * scale`` is in the file's units (fastMRI
    evaluates PSNR/SSIM with data_range = this max). ``mask_seed`` = ``mask_seed(file, slice)``.
    Test-style files (undersampled, with ``mask``) have no target and are refused.

    ``skip_edge_slices`` drops that many slices at both ends of every volume (their images are
    mostly noise; some fastMRI works drop them); 0 by default.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 320,
        *,
        task: str = "mri4x",
        skip_edge_slices: int = 0,
        split_seed: int = 0,
    ) -> None:
        from luser_cli.io.fastmri import open_fastmri

        if get_task(task).modality != "mri":
            raise ConfigError(f"fastMRI data fit the MRI tasks, not {task}")
        super().__init__(task, split, image_size, allow_all=True)
        self.root = Path(root)
        files, how = fastmri_split_files(self.root, self.split, split_seed)
        if not files and how == "folder":
            raise InputError(f"{self.root}: holds no fastMRI .h5 files")
        if not files and how.startswith("layout"):
            sub = FASTMRI_FOLDERS["train" if self.split == "train" else "val"]
            raise InputError(f"{self.root}: no {sub}/*.h5 files for the {self.split} split")
        base = self.root if self.root.is_dir() else self.root.parent
        slices: list[list[int]] = []
        self._attr_max: list[float | None] = []
        self._has_target: list[bool] = []
        for path in files:
            with open_fastmri(path) as ff:
                if ff.undersampled and not ff.has_target:
                    raise InputError(
                        f"{path}: fastMRI test file (undersampled k-space, no "
                        "reconstruction_esc) cannot serve as ground truth; use train/val files"
                    )
                n = ff.n_slices
                k = min(int(skip_edge_slices), (n - 1) // 2)
                slices.append(list(range(k, n - k)))
                mx = ff.attrs.get("max")
                self._attr_max.append(float(mx) if mx is not None and mx > 0 else None)
                self._has_target.append(ff.has_target)
        names = [relative_name(p, base) for p in files]
        items = [(f, s) for f in range(len(files)) for s in slices[f]]
        keys = [f"{names[f]}:{s}" for f, s in items]
        if how == "layout-slices" and self.split != "all":  # halve the few validation volumes
            half = "train" if self.split == "val" else "test"
            items = [items[i] for i in select_split(keys, half, split_seed, (0.5, 0.0, 0.5))]
        elif how in ("folder", "file") and len(files) < 3 and self.split != "all":
            items = [items[i] for i in select_split(keys, self.split, split_seed)]
        elif how == "folder" and self.split != "all":
            keep = set(select_split(names, self.split, split_seed))
            items = [(f, s) for f, s in items if f in keep]
        used = sorted({f for f, _ in items})
        remap = {f: i for i, f in enumerate(used)}
        self.files = [files[f] for f in used]
        self.names = [names[f] for f in used]
        self._attr_max = [self._attr_max[f] for f in used]
        self._has_target = [self._has_target[f] for f in used]
        self.items = [(remap[f], s) for f, s in items]
        self._max_cache: dict[int, float] = {}
        self._require_items("fastMRI slices")

    def volume_max(self, file_index: int) -> float:
        """The max of a volume's targets (attribute ``max``, else computed and cached)."""
        if self._attr_max[file_index] is not None:
            return float(self._attr_max[file_index])
        if file_index not in self._max_cache:
            from luser_cli.io.fastmri import open_fastmri

            top = 0.0
            with open_fastmri(self.files[file_index]) as ff:
                for s in range(0, ff.n_slices, 8):
                    stop = min(s + 8, ff.n_slices)
                    top = max(top, float(self._targets(ff, file_index, s, stop).max()))
            self._max_cache[file_index] = top if top > 0 else 1.0
        return self._max_cache[file_index]

    def _targets(self, ff: Any, file_index: int, start: int, stop: int) -> np.ndarray:
        if self._has_target[file_index]:
            return ff.target(start, stop)
        from luser_cli.io.fastmri import kspace_to_image

        image = kspace_to_image(ff.kspace_slices(start, stop), ff.crop_size)
        return np.abs(image).astype(np.float32)

    def __getitem__(self, index: int) -> Item:
        from luser_cli.io.fastmri import open_fastmri

        index = self._check_index(index)
        f, s = self.items[index]
        scale = self.volume_max(f)
        with open_fastmri(self.files[f]) as ff:
            target = self._targets(ff, f, s, s + 1)
        image = np.clip(target / scale, 0.0, 1.0).astype(np.float32)
        return self._finish(image, index, scale=scale, mask_key=(self.names[f], s))
