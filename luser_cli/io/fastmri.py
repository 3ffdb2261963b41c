"""fastMRI single-coil knee files (``singlecoil_{train,val,test}/fileNNNN.h5``), read lazily.

Layout (facebookresearch/fastMRI, ``fastmri/data/README.md``):

- ``kspace``: complex64 ``(slices, H, W)``, H = 640, W ~ 368 (varies by file). Train/val files
  are fully sampled; test files hold undersampled k-space (unsampled columns are zero);
- ``reconstruction_esc``: float32 ``(slices, 320, 320)``, train/val only: the magnitude of the
  centred orthonormal inverse FFT of ``kspace``, centre-cropped to 320 x 320;
- ``mask``: ``(W,)`` (test files): 1 for the sampled k-space columns;
- attributes ``max``, ``norm`` (of the target volume), ``acquisition`` (e.g. ``CORPD_FBK``);
  test files add ``acceleration`` and ``num_low_frequency``.

Other datasets (``reconstruction_rss``, ``ismrmrd_header``) are ignored. Slices are read one (or
a few) at a time; the volume is never loaded whole. Images are ``min(320, H) x min(320, W)``
centre crops (320 x 320 for every real file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from luser_cli.errors import InputError
from luser_cli.io.validate import (
    check_finite,
    check_stack_dims,
    hdf5_errors,
    open_hdf5,
    read_dataset,
)

#: fastMRI's image side (the ``reconstruction_esc`` crop).
FASTMRI_CROP = 320
_NUMERIC_ATTRS = ("max", "norm", "acceleration", "num_low_frequency")


@dataclass
class FastMRIFile:
    """An open fastMRI single-coil file (use as a context manager or call :meth:`close`).

    ``kspace_size``: ``(H, W)`` of the k-space grid; ``crop_size``: image size ``(h, w)``;
    ``mask``: float32 ``(W,)`` in {0, 1} for test-style (undersampled) files, else None;
    ``attrs``: the attributes luser uses (``max``, ``norm``, ``acceleration``,
    ``num_low_frequency``, ``acquisition``).
    """

    path: Path
    h5: Any
    n_slices: int
    kspace_size: tuple[int, int]
    crop_size: tuple[int, int]
    mask: np.ndarray | None
    has_target: bool
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def undersampled(self) -> bool:
        return self.mask is not None

    def kspace_slices(self, start: int, stop: int) -> np.ndarray:
        """complex64 ``(stop - start, H, W)``; refuses NaN/Inf."""
        with hdf5_errors(self.path):
            ds = self.h5["kspace"]
        k = read_dataset(ds, np.s_[start:stop], f"{self.path} kspace")
        check_finite(k, f"{self.path} kspace slices {start}..{stop - 1}")
        return k.astype(np.complex64, copy=False)

    def kspace_tensor(self, start: int, stop: int) -> Tensor:
        """float32 ``(stop - start, 2, H, W)`` (real, imaginary), as the MRI operators take."""
        return complex_to_channels(self.kspace_slices(start, stop))

    def slice_tensor(self, index: int) -> Tensor:
        """Slice ``index`` as float32 ``(2, H, W)`` (real, imaginary)."""
        if not 0 <= index < self.n_slices:
            raise InputError(f"{self.path}: slice {index} out of range 0..{self.n_slices - 1}")
        return self.kspace_tensor(index, index + 1)[0]

    def target(self, start: int, stop: int) -> np.ndarray:
        """``reconstruction_esc`` slices, float32 ``(stop - start, h, w)``."""
        if not self.has_target:
            raise InputError(f"{self.path}: has no reconstruction_esc")
        with hdf5_errors(self.path):
            ds = self.h5["reconstruction_esc"]
        t = read_dataset(ds, np.s_[start:stop], f"{self.path} reconstruction_esc")
        check_finite(t, f"{self.path} reconstruction_esc")
        return t.astype(np.float32, copy=False)

    def check_values(self, batch: int = 8) -> None:
        """Read every slice once to refuse NaN/Inf before any computation starts."""
        for s in range(0, self.n_slices, batch):
            self.kspace_slices(s, min(s + batch, self.n_slices))

    def intensity_max(self, batch: int = 8) -> float:
        """The volume's image-domain maximum: attribute ``max`` (the max of
        ``reconstruction_esc``) when present, else the max of the images of the stored k-space
        (zero-filled for undersampled files). Learned models see volumes divided by it, as
        they were trained."""
        if "max" in self.attrs and float(self.attrs["max"]) > 0:
            return float(self.attrs["max"])
        peak = 0.0
        for s in range(0, self.n_slices, batch):
            img = kspace_to_image(
                self.kspace_slices(s, min(s + batch, self.n_slices)), self.crop_size
            )
            peak = max(peak, float(np.abs(img).max()))
        return peak if peak > 0 else 1.0

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> FastMRIFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_fastmri(h5: Any) -> bool:
    """Whether an open HDF5 file looks like a fastMRI file (it has a ``kspace`` dataset)."""
    return "kspace" in h5


def open_fastmri(path: str | Path) -> FastMRIFile:
    """Open and validate a fastMRI single-coil file; raises one-line :class:`InputError`s."""
    h5 = open_hdf5(path)
    try:
        with hdf5_errors(path):
            return _validate(Path(path), h5)
    except BaseException:
        h5.close()
        raise


def _validate(path: Path, h5: Any) -> FastMRIFile:
    import h5py

    what = str(path)
    if "kspace" not in h5:
        raise InputError(f"{what}: no 'kspace' dataset (keys: {', '.join(h5.keys()) or 'none'})")
    ks = h5["kspace"]
    if not isinstance(ks, h5py.Dataset):
        raise InputError(f"{what}: 'kspace' is a group, not a dataset")
    if ks.ndim == 4:
        raise InputError(
            f"{what}: kspace has shape {ks.shape} (multi-coil); luser reads single-coil files"
        )
    if ks.ndim != 3:
        raise InputError(f"{what}: kspace must be (slices, H, W), got shape {ks.shape}")
    if ks.dtype.kind != "c":
        raise InputError(f"{what}: kspace must be complex (complex64), got dtype {ks.dtype}")
    check_stack_dims(ks.shape, f"{what} kspace")
    n, h, w = (int(s) for s in ks.shape)
    crop = (min(FASTMRI_CROP, h), min(FASTMRI_CROP, w))

    has_target = "reconstruction_esc" in h5
    if has_target:
        t = h5["reconstruction_esc"]
        if not isinstance(t, h5py.Dataset):
            raise InputError(f"{what}: 'reconstruction_esc' is not a dataset")
        if t.shape != (n, *crop):
            raise InputError(
                f"{what}: reconstruction_esc has shape {t.shape}, expected {(n, *crop)}"
            )
        if t.dtype.kind != "f":
            raise InputError(f"{what}: reconstruction_esc must be float32, got dtype {t.dtype}")

    mask = None
    if "mask" in h5:
        m = h5["mask"]
        if not isinstance(m, h5py.Dataset):
            raise InputError(f"{what}: 'mask' is not a dataset")
        if m.shape != (w,):
            raise InputError(f"{what}: mask has shape {m.shape}, expected ({w},) (k-space width)")
        if m.dtype.kind not in "biuf":
            raise InputError(f"{what}: mask must be boolean or numeric, got dtype {m.dtype}")
        mask = read_dataset(m, (), f"{what} mask")
        check_finite(mask, f"{what} mask")
        if not np.isin(mask, (0, 1)).all():
            raise InputError(f"{what}: mask values must be 0 or 1")
        mask = mask.astype(np.float32)
        if mask.sum() == 0:
            raise InputError(f"{what}: mask samples no k-space column")

    attrs = _read_attrs(h5, what)
    return FastMRIFile(path, h5, n, (h, w), crop, mask, has_target, attrs)


def _read_attrs(h5: Any, what: str) -> dict[str, Any]:
    """The attributes luser uses (numeric ones checked); others are not read at all."""
    attrs: dict[str, Any] = {}
    for key in (*_NUMERIC_ATTRS, "acquisition"):
        if key not in h5.attrs:
            continue
        value = h5.attrs[key]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        attrs[key] = value
    for key in _NUMERIC_ATTRS:
        if key in attrs:
            v = np.asarray(attrs[key])
            if v.size != 1 or v.dtype.kind not in "iuf" or not np.isfinite(v).all():
                raise InputError(f"{what}: attribute {key!r} must be a finite number, got {v!r}")
            attrs[key] = v.item()
    if "acceleration" in attrs and attrs["acceleration"] < 1:
        raise InputError(f"{what}: attribute 'acceleration' must be >= 1")
    if "acquisition" in attrs and not isinstance(attrs["acquisition"], str):
        del attrs["acquisition"]  # informative only
    return attrs


# -- transforms (fastMRI conventions) -------------------------------------------------------------
def ifft2c(kspace: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse 2D FFT over the last two axes (fastMRI's ``ifft2c``)."""
    axes = (-2, -1)
    shifted = np.fft.ifftshift(kspace, axes=axes)
    return np.fft.fftshift(np.fft.ifft2(shifted, axes=axes, norm="ortho"), axes=axes)


def center_crop_complex(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop the last two axes to ``size`` (clamped to the array's size)."""
    h, w = image.shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[..., top : top + ch, left : left + cw]


def kspace_to_image(
    kspace: np.ndarray, crop: tuple[int, int] = (FASTMRI_CROP, FASTMRI_CROP)
) -> np.ndarray:
    """k-space ``(..., H, W)`` -> complex image ``(..., 320, 320)``: centred orthonormal ifft2 and
    a centre crop (to the grid size when it is smaller)."""
    return center_crop_complex(ifft2c(np.asarray(kspace)), crop)


def magnitude(image: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """``|x|`` of a complex array, or of a ``(..., 2, H, W)`` real/imag tensor (channel kept)."""
    if isinstance(image, Tensor):
        return torch.linalg.vector_norm(image, dim=-3, keepdim=True)
    return np.abs(image)


def complex_to_channels(k: np.ndarray) -> Tensor:
    """complex ``(..., H, W)`` -> float32 tensor ``(..., 2, H, W)`` (real, imaginary)."""
    k = np.asarray(k)
    return torch.from_numpy(np.stack([k.real, k.imag], axis=-3).astype(np.float32))
