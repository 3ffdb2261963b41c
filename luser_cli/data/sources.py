"""``--data PATH``: recognise a data set folder and open the right data set for a task.

Kinds, checked in this order:

- ``celeba``: ``img_align_celeba/`` inside the folder (or the folder itself is
  ``img_align_celeba``), or ``*.jpg`` next to ``list_eval_partition.txt`` (or Kaggle's ``.csv``);
  fits ``deblur``;
- ``lodopab``: ``ground_truth_{train,validation,test}_NNN.hdf5`` files; fits ``ct``;
- ``fastmri``: ``singlecoil_train/`` or ``singlecoil_val/``, or ``*.h5`` files holding ``kspace``;
  fits ``mri4x`` and ``mri8x``;
- ``folder``: PNG / JPEG / TIFF images and/or NIfTI / ``.npy`` volumes (searched recursively); fits
  every task (channels are converted).

A single file is accepted too (an ``.h5`` fastMRI file, a LoDoPaB ground-truth file, an image or
a volume). Everything a user can get wrong (missing path, empty folder, data that do not fit the
task, a split without items) is a one-line :class:`~luser_cli.errors.InputError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from luser_cli.data.base import FileSliceDataset
from luser_cli.data.builtin import BuiltinDataset
from luser_cli.data.celeba import CelebADataset, celeba_image_folder
from luser_cli.data.fastmri import FASTMRI_FOLDERS, FastMRIDataset
from luser_cli.data.folder import FolderDataset, folder_files
from luser_cli.data.lodopab import LoDoPaBDataset
from luser_cli.data.splits import BUILTIN_SIZES, normalize_split
from luser_cli.errors import ConfigError, InputError
from luser_cli.tasks import TASK_NAMES, get_task, tasks_reading

#: What each kind holds and which tasks it fits.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "celeba": ("CelebA face photos", ("deblur",)),
    "lodopab": ("LoDoPaB-CT data", tasks_reading("lodopab")),
    "fastmri": ("fastMRI single-coil data", tasks_reading("fastmri")),
    "folder": ("images / volumes", TASK_NAMES),
}


def _has_kspace(path: Path) -> bool:
    from luser_cli.io.validate import open_hdf5

    with open_hdf5(path) as h5:
        return "kspace" in h5


def detect_kind(path: str | Path) -> str:
    """``"celeba"``, ``"lodopab"``, ``"fastmri"`` or ``"folder"`` for a data path.

    Raises :class:`InputError` for a missing path, an empty folder, or a folder with nothing
    readable in it.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: data path not found")
    if p.is_file():
        return _detect_file(p)
    if not p.is_dir():
        raise InputError(f"{p}: not a folder or a regular file")
    try:
        entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    except OSError as e:
        raise InputError(f"{p}: cannot list the folder ({e.strerror or e})") from None
    if not entries:
        raise InputError(f"{p}: folder is empty")
    names = {e.name for e in entries}
    if celeba_image_folder(p) is not None:
        return "celeba"
    if any(n.startswith("ground_truth_") and n.endswith(".hdf5") for n in names):
        return "lodopab"
    if any(n.startswith("observation_") and n.endswith(".hdf5") for n in names):
        raise InputError(
            f"{p}: holds only LoDoPaB observation_*.hdf5 files; training and evaluation need the "
            "ground_truth_*.hdf5 files"
        )
    if any((p / sub).is_dir() for sub in FASTMRI_FOLDERS.values()):
        return "fastmri"
    h5 = sorted(e for e in entries if e.suffix.lower() in (".h5", ".hdf5") and e.is_file())
    if h5:
        if _has_kspace(h5[0]):
            return "fastmri"
        raise InputError(
            f"{h5[0]}: HDF5 file is neither fastMRI (no 'kspace') nor LoDoPaB "
            "(not named ground_truth_*.hdf5)"
        )
    if folder_files(p):
        return "folder"
    raise InputError(
        f"{p}: holds no images (PNG/JPEG/TIFF), volumes (NIfTI/.npy) or known data set files "
        "(CelebA, LoDoPaB-CT, fastMRI)"
    )


def _detect_file(p: Path) -> str:
    name = p.name.lower()
    if name.endswith((".h5", ".hdf5")):
        if name.startswith("ground_truth_"):
            return "lodopab"
        if _has_kspace(p):
            return "fastmri"
        raise InputError(
            f"{p}: HDF5 file is neither fastMRI (no 'kspace') nor LoDoPaB ground truth"
        )
    if folder_files(p):
        return "folder"
    raise InputError(f"{p}: not a data set folder, an image or a volume")


def check_fits(kind: str, task: str, path: str | Path) -> None:
    """Refuse data that do not fit the task, e.g. LoDoPaB-CT for an MRI task."""
    what, tasks = KINDS[kind]
    if task not in tasks:
        fits = f"task {tasks[0]}" if len(tasks) == 1 else f"tasks {' and '.join(tasks)}"
        raise InputError(f"{path}: holds {what}, which fits {fits}, not {task}")


class LimitedDataset(Dataset):
    """At most ``size`` items of a data set, evenly spaced over it (deterministic).

    Items keep the base data set's ``meta["index"]``, so per-item seeds do not change.
    """

    def __init__(self, base: FileSliceDataset, size: int) -> None:
        n = len(base)
        self.base = base
        self.positions = [int(i * n // size) for i in range(size)] if size < n else list(range(n))
        for attr in ("task", "split", "image_size", "root"):
            setattr(self, attr, getattr(base, attr))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        return self.base[self.positions[index]]

    def item_name(self, index: int) -> str:
        return self.base.item_name(self.positions[index])

    def item_key(self, index: int) -> tuple[str, int]:
        return self.base.item_key(self.positions[index])


def open_dataset(
    task: str,
    split: str,
    image_size: int,
    data: str | Path | None,
    seed: int,
    size: int | None = None,
    builtin: str = "auto",
    random_phase: bool = False,
) -> Dataset:
    """The data set of ``task`` / ``split`` at ``image_size``: built-in data when ``data`` is None.

    ``seed`` seeds the built-in generators (item seeds of different splits never coincide, see
    :func:`luser_cli.data.splits.item_seed`); real-data splits do not depend on it, so evaluating
    with another seed never tests on training images. ``size``: the number of built-in items
    (default :data:`BUILTIN_SIZES`), or for real data at most that many items, evenly spaced
    over the split (None = all). ``split`` may be ``"all"`` for real data (every item of the
    folder, e.g. a folder kept for testing). ``builtin`` / ``random_phase``: the kind of built-in
    images and MRI's random phase (:mod:`luser_cli.data.builtin_images`); ignored for real data.
    """
    spec = get_task(task)
    if size is not None and int(size) < 1:
        raise ConfigError(f"data set size must be at least 1, got {size}")
    if data is None:
        split = normalize_split(split)
        n = BUILTIN_SIZES[split] if size is None else int(size)
        return BuiltinDataset(
            spec.name, split, n, image_size, seed, kind=builtin, random_phase=random_phase
        )
    path = Path(data).expanduser()
    kind = detect_kind(path)
    check_fits(kind, spec.name, path)
    ds: FileSliceDataset
    if kind == "celeba":
        ds = CelebADataset(path, split, image_size)
    elif kind == "lodopab":
        ds = LoDoPaBDataset(path, split, image_size)
    elif kind == "fastmri":
        ds = FastMRIDataset(path, split, image_size, task=spec.name)
    else:
        ds = FolderDataset(path, spec.name, split, image_size)
    if size is not None and int(size) < len(ds):
        return LimitedDataset(ds, int(size))
    return ds


def open_preset_data(
    preset: Any, split: str, data: str | Path | None, size: int | None = None
) -> Dataset:
    """:func:`open_dataset` for a resolved preset (:class:`luser_cli.training.config.Preset`):
    its task, image size, seed and built-in kind / MRI phase."""
    return open_dataset(
        preset.task,
        split,
        preset.image_size,
        data,
        preset.train.seed,
        size=size,
        builtin=preset.data.builtin,
        random_phase=preset.data.random_phase,
    )
