"""Torch data sets of ground-truth images in a task's layout.

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

Measurements are not made here: the trainer simulates them per item with the task's operator,
seeded from ``meta``. Items are produced lazily in ``__getitem__`` (files are opened per item, so
the data sets are safe to use in DataLoader worker processes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from luser_cli.data.splits import normalize_split, select_split
from luser_cli.data.transforms import resize_square, to_task_channels
from luser_cli.errors import ConfigError, InputError
from luser_cli.operators.masks import mask_seed
from luser_cli.tasks import get_task, is_mri

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
    def channels(self) -> int:
        return get_task(self.task).channels

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
        if self.channels != 2:  # resizing can overshoot [0, 1] slightly; MRI imag stays 0
            image = np.clip(image, 0.0, 1.0)
        else:
            image[0] = np.clip(image[0], 0.0, 1.0)
        meta: dict[str, Any] = {
            "index": index,
            "scale": torch.tensor(float(scale), dtype=torch.float32),
            "offset": torch.tensor(float(offset), dtype=torch.float32),
        }
        if is_mri(self.task):
            name, slice_index = mask_key if mask_key is not None else (self.item_name(index), 0)
            meta["mask_seed"] = mask_seed(name, slice_index)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), meta


# ---------------------------------------------------------------------------------------------
# File-backed data sets: a list of (file, slice) items fixed at construction, read per item.


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


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


# -- CelebA -----------------------------------------------------------------------------------

CELEBA_FOLDER = "img_align_celeba"
CELEBA_PARTITION = ("list_eval_partition.txt", "list_eval_partition.csv")
CELEBA_CROP = 140
_CELEBA_SUFFIXES = (".jpg", ".jpeg", ".png")
_PARTITION_SPLITS = {"0": "train", "1": "val", "2": "test"}


def celeba_image_folder(root: Path) -> Path | None:
    """The folder of CelebA's aligned JPEGs under ``root``: ``root/img_align_celeba`` (also
    Kaggle's doubled ``img_align_celeba/img_align_celeba``), or ``root`` itself when it is named
    ``img_align_celeba`` or holds the partition file next to the JPEGs; None if there is none."""
    if not root.is_dir():
        return None
    candidates = [root / CELEBA_FOLDER / CELEBA_FOLDER, root / CELEBA_FOLDER]
    if root.name == CELEBA_FOLDER:
        candidates = [root / CELEBA_FOLDER, root]
    for c in candidates:
        if c.is_dir():
            return c
    if any((root / name).is_file() for name in CELEBA_PARTITION) and any(
        p.suffix.lower() in _CELEBA_SUFFIXES for p in root.iterdir()
    ):
        return root
    return None


def celeba_partition_file(root: Path, image_folder: Path) -> Path | None:
    """``list_eval_partition.txt`` (or Kaggle's ``.csv``) in ``root``, ``root/Eval``, or the
    image folder's parents; None if absent."""
    places = [root, root / "Eval", image_folder.parent, image_folder.parent.parent]
    for place in places:
        for name in CELEBA_PARTITION:
            if (place / name).is_file():
                return place / name
    return None


def read_celeba_partition(path: Path) -> dict[str, str]:
    """``{"000001.jpg": "train", ...}`` from ``list_eval_partition.txt`` (``name 0|1|2`` lines)
    or Kaggle's ``list_eval_partition.csv`` (``image_id,partition`` header)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or (number == 1 and fields[0] == "image_id"):
            continue
        if len(fields) != 2 or fields[1] not in _PARTITION_SPLITS:
            raise InputError(
                f"{path}, line {number}: expected '<image name> 0|1|2', got {line.strip()[:60]!r}"
            )
        out[fields[0]] = _PARTITION_SPLITS[fields[1]]
    if not out:
        raise InputError(f"{path}: the partition file lists no images")
    return out


class CelebADataset(FileSliceDataset):
    """CelebA aligned faces for RGB deblurring: ``(3, image_size, image_size)`` in ``[0, 1]``.

    ``root`` is the CelebA folder (holding ``img_align_celeba/`` and usually
    ``list_eval_partition.txt``) or the ``img_align_celeba`` folder itself. Splits follow the
    partition file (0 train, 1 valid, 2 test) for the images it lists; images it does not list,
    or all images when there is no partition file, are split 80/10/10 by a stable hash of the
    file name (:func:`luser_cli.data.splits.select_split`, ``split_seed``).

    Preprocessing: the central ``crop x crop`` square (default 140, the common CelebA face crop;
    clipped to the image) of the 178 x 218 image, resized (anti-aliased) to ``image_size``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 128,
        *,
        crop: int = CELEBA_CROP,
        split_seed: int = 0,
    ) -> None:
        super().__init__("deblur", split, image_size, allow_all=True)
        self.root = Path(root)
        folder = celeba_image_folder(self.root)
        if folder is None:
            raise InputError(f"{self.root}: no {CELEBA_FOLDER}/ folder of CelebA images")
        self.image_folder = folder
        self.crop = int(crop)
        names = sorted(
            p.name
            for p in folder.iterdir()
            if p.suffix.lower() in _CELEBA_SUFFIXES and _visible(p) and p.is_file()
        )
        if not names:
            raise InputError(f"{folder}: holds no CelebA images (*.jpg)")
        partition_file = celeba_partition_file(self.root, folder)
        self.partition_file = partition_file
        partition = read_celeba_partition(partition_file) if partition_file else {}
        listed = [n for n in names if n in partition]
        unlisted = [n for n in names if n not in partition]
        if self.split == "all":
            chosen = names
        else:
            chosen = [n for n in listed if partition[n] == self.split]
            chosen += [unlisted[i] for i in select_split(unlisted, self.split, split_seed)]
            chosen.sort()
        self.files = [folder / n for n in chosen]
        self.names = chosen
        self.items = [(i, 0) for i in range(len(chosen))]
        self._require_items("CelebA images")

    def _is_volume(self, file_index: int) -> bool:
        return False

    def __getitem__(self, index: int) -> Item:
        from luser_cli.io.images import read_image

        index = self._check_index(index)
        image = read_image(self.files[self.items[index][0]])
        h, w = image.shape[-2:]
        side = min(self.crop, h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return self._finish(image[:, top : top + side, left : left + side], index)


# -- LoDoPaB-CT -------------------------------------------------------------------------------

LODOPAB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def lodopab_ground_truth_files(root: Path) -> dict[str, list[Path]]:
    """``{"train": [...], "val": [...], "test": [...]}``: ``ground_truth_*.hdf5`` sorted by NNN."""
    from luser_cli.io.lodopab import parse_name

    found: dict[str, list[tuple[int, Path]]] = {s: [] for s in LODOPAB_SPLITS}
    inverse = {v: k for k, v in LODOPAB_SPLITS.items()}
    paths = [root] if root.is_file() else sorted(root.glob("ground_truth_*.hdf5"))
    for p in paths:
        parsed = parse_name(p)
        if parsed and parsed[0] == "ground_truth":
            found[inverse[parsed[1]]].append((parsed[2], p))
    return {s: [p for _, p in sorted(v)] for s, v in found.items()}


class LoDoPaBDataset(FileSliceDataset):
    """LoDoPaB-CT ground truth for CT: ``(1, image_size, image_size)`` in ``[0, 1]``.

    Reads ``ground_truth_{train,validation,test}_NNN.hdf5`` (``data`` ``(n, 362, 362)`` float32,
    already in ``[0, 1]``: 1 = 81.35858 / m); splits are LoDoPaB's own (``val`` =
    ``validation``), items run over the split's files in NNN order, slice by slice. The
    ``observation_*`` files are not read: measurements are simulated. Images are resized
    (anti-aliased) when ``image_size != 362``; ``scale`` is 1.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 362) -> None:
        from luser_cli.io.lodopab import open_lodopab

        super().__init__("ct", split, image_size, allow_all=True)
        self.root = Path(root)
        by_split = lodopab_ground_truth_files(self.root)
        splits = list(LODOPAB_SPLITS) if self.split == "all" else [self.split]
        self.files = [p for s in splits for p in by_split[s]]
        base = self.root if self.root.is_dir() else self.root.parent
        self.names = [_relative_name(p, base) for p in self.files]
        self.items = []
        for f, path in enumerate(self.files):
            with open_lodopab(path, "ground_truth") as lf:
                self.items.extend((f, s) for s in range(lf.n))
        if not self.files:
            name = "all" if self.split == "all" else LODOPAB_SPLITS[self.split]
            raise InputError(
                f"{self.root}: holds no LoDoPaB ground_truth_{name}_*.hdf5 files"
                if self.split != "all"
                else f"{self.root}: holds no LoDoPaB ground_truth_*.hdf5 files"
            )
        self._require_items("LoDoPaB ground-truth images")

    def __getitem__(self, index: int) -> Item:
        from luser_cli.io.lodopab import open_lodopab

        index = self._check_index(index)
        f, s = self.items[index]
        with open_lodopab(self.files[f], "ground_truth") as lf:
            image = lf.samples(s, s + 1)
        return self._finish(np.clip(image, 0.0, 1.0), index)


# -- fastMRI ----------------------------------------------------------------------------------

FASTMRI_FOLDERS = {"train": "singlecoil_train", "val": "singlecoil_val", "test": "singlecoil_test"}
_H5_SUFFIXES = (".h5", ".hdf5")


def _h5_files(folder: Path) -> list[Path]:
    files = (p for p in folder.iterdir() if p.suffix.lower() in _H5_SUFFIXES and _visible(p))
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

        if not is_mri(get_task(task).name):
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
        names = [_relative_name(p, base) for p in files]
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


# -- folders of images / NIfTI volumes --------------------------------------------------------

FOLDER_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
FOLDER_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")


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
        names = [_relative_name(p, base) for p in files]
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
