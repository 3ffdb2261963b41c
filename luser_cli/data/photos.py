"""RGB patches of the colour photographs that scikit-image ships inside its package.

Only files bundled with scikit-image are used (``skimage/data/*.png|jpg``), so this works on an
offline machine; the data sets scikit-image downloads on demand (``brain``, ``cells3d``,
``kidney``, ``lily``, ``eagle``, ``skin``, ...) are never touched.

The splits are disjoint **by photograph**, so a test patch never comes from a training photo:

- train: astronaut, immunohistochemistry, motorcycle_left, motorcycle_right (a stereo pair of one
  scene, kept together), retina, hubble_deep_field
- val: rocket
- test: chelsea, coffee

A patch is a random square crop whose side is ``size * s`` with ``s`` log-uniform in
``[1, 2]`` (clipped to the photo), resized to ``size x size``, then randomly flipped / rotated by
a multiple of 90 degrees. Crops that are nearly flat (std < 0.04, e.g. the black border of
``retina`` or the empty sky of ``hubble_deep_field``) are redrawn a few times. Everything is
deterministic per seed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from luser_cli.data.splits import normalize_split
from luser_cli.errors import InputError

PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "immunohistochemistry": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "rocket": "rocket.jpg",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
}
PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "astronaut",
        "immunohistochemistry",
        "motorcycle_left",
        "motorcycle_right",
        "retina",
        "hubble_deep_field",
    ),
    "val": ("rocket",),
    "test": ("chelsea", "coffee"),
}
MIN_STD = 0.04
MAX_TRIES = 8


def skimage_data_dir() -> Path:
    """The folder of sample files bundled with scikit-image."""
    import skimage.data

    return Path(skimage.data.__file__).parent


@cache
def load_photo(name: str) -> np.ndarray:
    """A bundled photograph as read-only ``(3, H, W)`` float32 in ``[0, 1]`` (cached)."""
    from skimage.io import imread

    if name not in PHOTO_FILES:
        raise InputError(f"unknown built-in photo {name!r}; known: {', '.join(PHOTO_FILES)}")
    path = skimage_data_dir() / PHOTO_FILES[name]
    try:
        rgb = imread(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read scikit-image's bundled photo {path}: {e}") from None
    image = np.ascontiguousarray(np.moveaxis(rgb[..., :3], -1, 0), dtype=np.float32) / 255.0
    image.setflags(write=False)
    return image


def photo_names(split: str) -> tuple[str, ...]:
    """The photographs of a split (``train`` / ``val`` / ``test``)."""
    return PHOTO_SPLITS[normalize_split(split)]


def random_patch(
    photo: np.ndarray,
    size: int,
    rng: np.random.Generator,
    max_zoom: float = 2.0,
    augment: bool = True,
    min_zoom: float = 1.0,
) -> np.ndarray:
    """One random square crop of ``photo`` ``(3, H, W)`` resized to ``(3, size, size)`` float32.

    The crop side is ``size * s``, ``s`` log-uniform in ``[min_zoom, max_zoom]``, clipped to the
    photo's shorter side (a crop smaller than ``size`` is upsampled). With ``augment``, the patch is
    flipped and rotated by one of the 8 symmetries of the square.
    """
    h, w = photo.shape[-2:]
    lo, hi = np.log(min_zoom), np.log(max_zoom)
    zoom = float(np.exp(rng.uniform(lo, hi))) if hi > lo else float(max_zoom)
    side = max(int(min(round(size * zoom), h, w)), 2)
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    patch = _resize(photo[:, top : top + side, left : left + side], size)
    if augment:
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        patch = np.rot90(patch, k, axes=(1, 2))
        if flip:
            patch = patch[:, :, ::-1]
    return np.ascontiguousarray(patch, dtype=np.float32).clip(0.0, 1.0)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square ``(C, s, s)`` -> ``(C, size, size)``, anti-aliased bilinear (torch: ~8x faster than
    scikit-image's Gaussian-prefiltered resize, which matters when patches are made per step)."""
    if image.shape[-1] == size:
        return image
    t = torch.from_numpy(np.array(image, dtype=np.float32))[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].numpy()


def patch_of(
    images: Callable[[int], np.ndarray],
    count: int,
    size: int,
    seed: int | np.random.SeedSequence,
    accept: Callable[[np.ndarray], bool],
    min_zoom: float = 1.0,
) -> np.ndarray:
    """A deterministic :func:`random_patch` of one of ``count`` images (``images(i)``, chosen
    uniformly), redrawn up to ``MAX_TRIES`` times until ``accept(patch)``; the last draw is
    returned if none is accepted."""
    rng = np.random.default_rng(seed)
    patch = None
    for _ in range(MAX_TRIES):
        patch = random_patch(images(int(rng.integers(0, count))), size, rng, min_zoom=min_zoom)
        if accept(patch):
            break
    assert patch is not None
    return patch


def photo_patch(split: str, size: int, seed: int | np.random.SeedSequence) -> np.ndarray:
    """A deterministic random patch ``(3, size, size)`` float32 in ``[0, 1]`` from ``split``'s
    photographs (photo chosen uniformly; near-flat crops redrawn up to ``MAX_TRIES`` times)."""
    names = photo_names(split)
    return patch_of(
        lambda i: load_photo(names[i]), len(names), size, seed, lambda p: p.std() >= MIN_STD
    )
