"""LoDoPaB-CT ground truth (CT): :class:`LoDoPaBDataset` over ``ground_truth_*.hdf5`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luser_cli.data.base import FileSliceDataset, Item, relative_name
from luser_cli.errors import InputError

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
        self.names = [relative_name(p, base) for p in self.files]
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
