"""LoDoPaB-CT files (``{observation,ground_truth}_{train,validation,test}_NNN.hdf5``), read lazily.

Each file holds one dataset ``data``:

- ``observation_*``: float32 ``(n, 1000, 513)``: post-log sinograms ``-log(N / N0) / mu_max``
  (N0 = 4096 photons, mu_max = 81.35858 / m), 1000 angles at the midpoints of [0, pi) by 513
  detector bins over [-0.1838, 0.1838] m (the image disc's radius);
- ``ground_truth_*``: float32 ``(n, 362, 362)`` in [0, 1] (1 = mu_max), images on
  [-0.13, 0.13]^2 m, stored transposed relative to the DICOM view.

n is 128 (the last file of a split may hold fewer); every sample in the file is reconstructed
(zero-padded samples, if any, simply give zero images). Reconstructions use
``CTGeometry.lodopab(362, angles_total=1000, angle_step=1)`` and come out in the ground-truth
orientation. Only the exact LoDoPaB shapes are accepted (no scaled geometries: any other
detector/angle count is refused with a one-line error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from luser_cli.errors import InputError
from luser_cli.io.validate import (
    check_finite,
    check_stack_dims,
    hdf5_errors,
    open_hdf5,
    read_dataset,
)

LODOPAB_IMAGE_SIZE = 362
LODOPAB_ANGLES = 1000
LODOPAB_DETECTORS = 513
LODOPAB_SAMPLES_PER_FILE = 128
#: Image half-width (m) and detector half-width (m, = 0.13 * sqrt 2).
LODOPAB_IMAGE_HALF_WIDTH = 0.13
LODOPAB_DETECTOR_HALF_WIDTH = 0.13 * float(np.sqrt(2.0))

LoDoPaBKind = Literal["observation", "ground_truth"]
_SHAPES: dict[str, tuple[int, int]] = {
    "observation": (LODOPAB_ANGLES, LODOPAB_DETECTORS),
    "ground_truth": (LODOPAB_IMAGE_SIZE, LODOPAB_IMAGE_SIZE),
}
_NAME = re.compile(r"^(observation|ground_truth)_(train|validation|test|challenge)_(\d+)\.hdf5$")


@dataclass
class LoDoPaBFile:
    """An open LoDoPaB file: ``kind``, ``n`` samples of shape ``sample_shape``."""

    path: Path
    h5: Any
    kind: LoDoPaBKind
    n: int
    sample_shape: tuple[int, int]

    def samples(self, start: int, stop: int) -> np.ndarray:
        """float32 ``(stop - start, *sample_shape)``; refuses NaN/Inf."""
        with hdf5_errors(self.path):
            ds = self.h5["data"]
        d = read_dataset(ds, np.s_[start:stop], f"{self.path} data")
        check_finite(d, f"{self.path} data samples {start}..{stop - 1}")
        return d.astype(np.float32, copy=False)

    def check_values(self, batch: int = 16) -> None:
        """Read every sample once to refuse NaN/Inf before any computation starts."""
        for s in range(0, self.n, batch):
            self.samples(s, min(s + batch, self.n))

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> LoDoPaBFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lodopab_kind(h5: Any) -> LoDoPaBKind | None:
    """``"observation"`` / ``"ground_truth"`` if an open HDF5 file has LoDoPaB's layout (a 3D
    ``data`` dataset with the right trailing shape), else None."""
    import h5py

    d = h5.get("data", getlink=False) if "data" in h5 else None
    if not isinstance(d, h5py.Dataset) or d.ndim != 3:
        return None
    for kind, shape in _SHAPES.items():
        if tuple(d.shape[1:]) == shape:
            return kind  # type: ignore[return-value]
    return None


def parse_name(path: str | Path) -> tuple[str, str, int] | None:
    """``(kind, split, index)`` from a LoDoPaB file name, or None if it does not match."""
    m = _NAME.match(Path(path).name)
    return (m.group(1), m.group(2), int(m.group(3))) if m else None


def matching_ground_truth(path: str | Path) -> Path:
    """``.../observation_test_003.hdf5`` -> ``.../ground_truth_test_003.hdf5`` (may not exist)."""
    p = Path(path)
    return p.with_name(p.name.replace("observation_", "ground_truth_", 1))


def open_lodopab(path: str | Path, kind: LoDoPaBKind | None = None) -> LoDoPaBFile:
    """Open and validate a LoDoPaB file; ``kind`` (if given) must match its content."""
    h5 = open_hdf5(path)
    try:
        with hdf5_errors(path):
            return _validate(Path(path), h5, kind)
    except BaseException:
        h5.close()
        raise


def _validate(path: Path, h5: Any, kind: LoDoPaBKind | None) -> LoDoPaBFile:
    import h5py

    what = str(path)
    if "data" not in h5:
        raise InputError(f"{what}: no 'data' dataset (keys: {', '.join(h5.keys()) or 'none'})")
    d = h5["data"]
    if not isinstance(d, h5py.Dataset):
        raise InputError(f"{what}: 'data' is a group, not a dataset")
    if d.dtype.kind != "f":
        raise InputError(f"{what}: data must be float32, got dtype {d.dtype}")
    found = lodopab_kind(h5)
    want = kind or found
    if want is None or found != want:
        expect = (
            f"(n, {_SHAPES[kind][0]}, {_SHAPES[kind][1]})"
            if kind
            else f"(n, {LODOPAB_ANGLES}, {LODOPAB_DETECTORS}) observations or "
            f"(n, {LODOPAB_IMAGE_SIZE}, {LODOPAB_IMAGE_SIZE}) ground truth"
        )
        raise InputError(f"{what}: LoDoPaB data has shape {d.shape}, expected {expect}")
    check_stack_dims(d.shape, what)
    return LoDoPaBFile(path, h5, want, int(d.shape[0]), _SHAPES[want])
