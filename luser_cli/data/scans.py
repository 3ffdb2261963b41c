"""Patches of real MR slices that nibabel and pydicom ship inside their packages (offline).

Only example files bundled with the installed packages are read; nothing is downloaded. The
splits are disjoint by acquisition where the files allow it:

- train: nibabel's ``example4d.nii.gz`` (a 128 x 96 x 24 brain EPI series), time point 0, and
  pydicom's ``examples_overlay.dcm`` (a 300 x 484 abdominal MR slice);
- val: ``example4d.nii.gz`` time point 1 (the same subject a few seconds later: it only serves to
  choose a checkpoint, never to report a result);
- test: nibabel's ``anatomical.nii`` (a 33 x 41 x 25 T1 volume of another subject).

Each slice is scaled to ``[0, 1]`` by its 99.5th percentile. A patch is a random square crop
whose side is ``size * s`` with ``s`` log-uniform in ``[SCAN_MIN_ZOOM, 2]`` (clipped to the
slice), resized to ``size x size`` and flipped / rotated, so the prox also sees the smooth,
upsampled content of low-resolution scans. Nearly empty crops are redrawn.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from luser_cli.data.photos import patch_of
from luser_cli.data.splits import normalize_split
from luser_cli.errors import InputError

#: (package, file, time point or None): the slices of each split.
SCAN_SPLITS: dict[str, tuple[tuple[str, str, int | None], ...]] = {
    "train": (("nibabel", "example4d.nii.gz", 0), ("pydicom", "examples_overlay.dcm", None)),
    "val": (("nibabel", "example4d.nii.gz", 1),),
    "test": (("nibabel", "anatomical.nii", None),),
}
#: A slice is kept when its mean is at least this fraction of the volume's brightest slice mean.
MIN_SLICE_MEAN = 0.5
#: Smallest crop side as a fraction of the patch size (crops below 1 are upsampled).
SCAN_MIN_ZOOM = 0.5
#: Crops whose mean is below this (mostly background) are redrawn.
MIN_PATCH_MEAN = 0.08


def _package_file(package: str, name: str) -> Path:
    if package == "nibabel":
        import nibabel

        return Path(nibabel.__file__).parent / "tests" / "data" / name
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if found is None:
        raise InputError(f"pydicom's example file {name} is not installed")
    return Path(str(found))


def _normalise(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    scale = float(np.percentile(image, 99.5))
    return np.clip(image / max(scale, 1e-6), 0.0, 1.0)


@cache
def load_slices(split: str) -> tuple[np.ndarray, ...]:
    """The slices of ``split`` as read-only ``(1, H, W)`` float32 arrays in ``[0, 1]`` (cached)."""
    slices: list[np.ndarray] = []
    for package, name, time_point in SCAN_SPLITS[normalize_split(split)]:
        path = _package_file(package, name)
        try:
            if package == "nibabel":
                import nibabel

                volume = np.asarray(nibabel.load(path).dataobj, dtype=np.float32)
                if time_point is not None:
                    volume = volume[..., time_point]
                means = volume.mean(axis=(0, 1))
                bright = means >= MIN_SLICE_MEAN * means.max()
                slices += [_normalise(volume[:, :, z].T[::-1]) for z in np.flatnonzero(bright)]
            else:
                import pydicom

                slices.append(_normalise(pydicom.dcmread(path).pixel_array))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the example scan {path}: {e}") from None
    out = []
    for image in slices:
        image = np.ascontiguousarray(image[None])
        image.setflags(write=False)
        out.append(image)
    return tuple(out)


def scan_patch(split: str, size: int, seed: int | np.random.SeedSequence) -> np.ndarray:
    """A deterministic random patch ``(1, size, size)`` float32 in ``[0, 1]`` of ``split``'s MR
    slices (slice chosen uniformly; mostly-background crops redrawn: see
    :func:`luser_cli.data.photos.patch_of`)."""
    slices = load_slices(split)
    return patch_of(
        slices.__getitem__,
        len(slices),
        size,
        seed,
        lambda p: p.mean() >= MIN_PATCH_MEAN,
        min_zoom=SCAN_MIN_ZOOM,
    )
