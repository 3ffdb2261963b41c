"""The built-in data set: generated images that need no files (:mod:`.builtin_images`)."""

from __future__ import annotations

import torch

from luser_cli.data.base import Item, TaskImageDataset
from luser_cli.data.builtin_images import builtin_image, resolve_kind, with_random_phase
from luser_cli.data.splits import item_seed
from luser_cli.errors import ConfigError
from luser_cli.tasks import get_task


class BuiltinDataset(TaskImageDataset):
    """Generated data that needs no files: ellipse phantoms, photo patches or a mix of both
    (:mod:`luser_cli.data.builtin_images`; by default photos for deblurring, ellipses otherwise).

    Item ``i`` of ``split`` is generated from :func:`luser_cli.data.splits.item_seed`
    ``(seed, split, i)``; the seed ranges of train / val / test are disjoint for any base seeds,
    and photo patches of different splits come from different photographs
    (:mod:`luser_cli.data.photos`). For MRI the phantom is the real part and the imaginary part is
    0 (a real, non-negative "magnitude" image, like fastMRI's ``reconstruction_esc`` targets).
    ``mask_seed`` is ``mask_seed("builtin-<split>-<seed>", i)``. Each item costs about 1 ms
    (64 x 64 phantom) to 6 ms (128 x 128 photo patch).
    """

    def __init__(
        self,
        task: str,
        split: str = "train",
        size: int = 1000,
        image_size: int | None = None,
        seed: int = 0,
        kind: str = "auto",
        random_phase: bool = False,
    ) -> None:
        super().__init__(task, split, image_size or get_task(task).image_size)
        if int(size) < 1:
            raise ConfigError(f"data set size must be at least 1, got {size}")
        self.size = int(size)
        self.seed = int(seed)
        item_seed(self.seed, self.split, self.size - 1)  # validates seed and size up front
        try:
            self.kind = resolve_kind(kind, self.spec)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if random_phase and self.spec.modality != "mri":
            raise ConfigError(f"random phase is for MRI tasks, not {self.task}")
        self.random_phase = bool(random_phase)

    def __len__(self) -> int:
        return self.size

    def item_seed(self, index: int) -> int:
        return item_seed(self.seed, self.split, self._check_index(index))

    def item_name(self, index: int) -> str:
        return f"builtin-{self.kind}-{self.split}-seed{self.seed}-{self._check_index(index):06d}"

    def __getitem__(self, index: int) -> Item:
        index = self._check_index(index)
        s = item_seed(self.seed, self.split, index)
        image = builtin_image(self.kind, self.spec, self.split, self.image_size, s)
        out, meta = self._finish(
            image, index, mask_key=(f"builtin-{self.split}-{self.seed}", index)
        )
        if self.random_phase:
            out = torch.from_numpy(with_random_phase(out.numpy(), s))
        return out, meta
