"""CelebA aligned faces (RGB deblurring): :class:`CelebADataset`, and finding CelebA's image folder
and partition file (also used by :func:`luser_cli.data.sources.detect_kind`)."""

from __future__ import annotations

from pathlib import Path

from luser_cli.data.base import FileSliceDataset, Item, visible
from luser_cli.data.splits import select_split
from luser_cli.errors import InputError

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
            if p.suffix.lower() in _CELEBA_SUFFIXES and visible(p) and p.is_file()
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
