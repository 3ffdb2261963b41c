"""luser's measurement file: a versioned HDF5 layout written by ``luser simulate``.

The layout is documented in ``docs/measurement-format.md`` (format ``luser-measurement``,
version 1). It holds the measurements, everything needed to rebuild the operator (task, image
size, physics settings, MRI masks, k-space size) and the ground truth when known.
:func:`read_measurement` validates all of it and refuses anything inconsistent with one line.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from luser_cli.errors import ConfigError, InputError
from luser_cli.io.atomic import atomic_write_bytes, check_writable
from luser_cli.io.validate import (
    check_finite,
    check_stack_dims,
    hdf5_errors,
    open_hdf5,
    read_dataset,
)
from luser_cli.tasks import TASK_NAMES, PhysicsSettings, get_task

FORMAT_NAME = "luser-measurement"
FORMAT_VERSION = 1
_KNOWN_DATASETS = ("measurements", "ground_truth", "masks", "affine", "angles", "kernel")


@dataclass
class MeasurementFile:
    """Contents of a measurement file (everything in memory, validated).

    Shapes: ``measurements`` float32 ``(N, *measurement_shape)``; ``ground_truth`` float32
    ``(N, C, H, W)`` or None; ``masks`` uint8 ``(N, Wk)`` (MRI) or None; ``affine`` float64
    ``(4, 4)`` (NIfTI inputs) or None; ``angles`` float64 ``(n_angles,)`` radians (CT) or None.
    """

    path: Path
    task: str
    image_size: tuple[int, int]
    channels: int
    physics: PhysicsSettings
    measurements: np.ndarray
    ground_truth: np.ndarray | None = None
    masks: np.ndarray | None = None
    kspace_size: tuple[int, int] | None = None
    affine: np.ndarray | None = None
    angles: np.ndarray | None = None
    noise: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    source: str = ""
    luser_version: str = ""
    created: str = ""
    version: int = FORMAT_VERSION

    @property
    def n(self) -> int:
        return int(self.measurements.shape[0])

    def operator(self, indices: slice | list[int] | None = None):  # -> LinearOperator
        """The operator for the samples ``indices`` (all by default).

        Deblurring and CT share one operator for every sample; for MRI the operator holds the
        masks of the selected samples (one per sample, in order).
        """
        from luser_cli.physics import build_operator

        masks = None
        if self.masks is not None:
            sel = slice(None) if indices is None else indices
            masks = torch.from_numpy(self.masks[sel].astype(np.float32))
        return build_operator(
            self.task, self.image_size, self.physics, masks=masks, kspace_size=self.kspace_size
        )

    def measurements_tensor(self, indices: slice | list[int] | None = None) -> Tensor:
        sel = slice(None) if indices is None else indices
        return torch.from_numpy(np.ascontiguousarray(self.measurements[sel]))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_measurement(
    path: str | Path,
    *,
    task: str,
    image_size: tuple[int, int],
    physics: PhysicsSettings,
    measurements: np.ndarray | Tensor,
    ground_truth: np.ndarray | Tensor | None = None,
    masks: np.ndarray | Tensor | None = None,
    kspace_size: tuple[int, int] | None = None,
    affine: np.ndarray | None = None,
    angles: np.ndarray | Tensor | None = None,
    kernel: np.ndarray | Tensor | None = None,
    noise: dict[str, Any] | None = None,
    seed: int | None = None,
    source: str = "",
) -> Path:
    """Write a version-1 measurement file atomically (layout: ``docs/measurement-format.md``).

    ``measurements`` ``(N, *measurement_shape)``; ``ground_truth`` ``(N, C, H, W)``; ``masks``
    ``(N, Wk)`` in {0, 1} (MRI, required there); ``affine`` ``(4, 4)``; ``angles`` radians;
    ``kernel`` the blur kernel (deblur, for reference). Returns the path written.
    """
    from luser_cli import __version__
    from luser_cli.io.h5memory import h5_bytes, h5_in_memory

    check_writable(path)
    spec = get_task(task)
    y = _np32(measurements)
    if y.ndim < 2:
        raise ValueError(f"measurements must be (N, ...), got shape {y.shape}")
    n = y.shape[0]
    if spec.modality == "mri" and masks is None:
        raise ValueError("MRI measurement files need the masks")
    with h5_in_memory() as f:  # built in memory, then one atomic byte write (full disk: 1 line)
        a = f.attrs
        a["format"] = _fixed(FORMAT_NAME)
        a["version"] = FORMAT_VERSION
        a["task"] = _fixed(spec.name)
        a["image_size"] = np.asarray(image_size, dtype=np.int64)
        a["channels"] = spec.channels
        if kspace_size is not None:
            a["kspace_size"] = np.asarray(kspace_size, dtype=np.int64)
        a["physics"] = _fixed(json.dumps(physics.model_dump(), sort_keys=True))
        a["noise"] = _fixed(json.dumps(noise or {}, sort_keys=True))
        a["seed"] = -1 if seed is None else int(seed)
        a["source"] = _fixed(str(source))
        a["luser_version"] = _fixed(__version__)
        a["created"] = _fixed(_now())
        f.create_dataset("measurements", data=y, compression="gzip", compression_opts=4)
        if ground_truth is not None:
            gt = _np32(ground_truth)
            if gt.shape[0] != n:
                raise ValueError(f"ground truth holds {gt.shape[0]} samples, measurements {n}")
            f.create_dataset("ground_truth", data=gt, compression="gzip", compression_opts=4)
        if masks is not None:
            m = np.asarray(masks.cpu() if isinstance(masks, Tensor) else masks)
            f.create_dataset("masks", data=(m != 0).astype(np.uint8).reshape(n, -1))
        if affine is not None:
            f.create_dataset("affine", data=np.asarray(affine, dtype=np.float64))
        if angles is not None:
            ang = angles.cpu().numpy() if isinstance(angles, Tensor) else np.asarray(angles)
            f.create_dataset("angles", data=ang.astype(np.float64).reshape(-1))
        if kernel is not None:
            k = kernel.cpu().numpy() if isinstance(kernel, Tensor) else np.asarray(kernel)
            f.create_dataset("kernel", data=k.astype(np.float64))
        image = h5_bytes(f)
    atomic_write_bytes(path, image)
    return Path(path)


def _fixed(text: str) -> np.bytes_:
    """A string attribute stored as fixed-length UTF-8 bytes (no variable-length heap objects,
    which a damaged file can turn into an endless read inside the HDF5 library)."""
    return np.bytes_(text.encode("utf-8"))


def _np32(a: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def is_measurement_file(h5: Any) -> bool:
    """Whether an open HDF5 file says it is a luser measurement file."""
    return string_attr(h5.attrs.get("format")) == FORMAT_NAME


def string_attr(v: Any) -> str | None:
    """A string attribute's value (fixed or variable length, bytes or str), else None."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    if isinstance(v, np.ndarray) and v.shape == () and v.dtype.kind in "SUO":
        return string_attr(v.item())
    return None


def read_measurement(path: str | Path) -> MeasurementFile:
    """Read and validate a measurement file.

    Checks: the format name and version, a known task, physics settings valid for the task,
    dataset shapes and dtypes, consistency of the measurement shape with the operator rebuilt
    from the stored settings, finite values. Every problem is one :class:`InputError` line.
    """
    p = Path(path)
    with open_hdf5(p) as h5, hdf5_errors(p):
        mf = _read(p, h5)
    _check_operator(mf)
    return mf


def _check_operator(mf: MeasurementFile) -> None:
    """The operator rebuilt from the stored settings must exist and fit the measurements."""
    what = str(mf.path)
    try:
        op = mf.operator(slice(0, 1))
    except ConfigError as e:
        raise InputError(f"{what}: stored settings do not give an operator ({e})") from None
    if tuple(op.measurement_shape()) != mf.measurements.shape[1:]:
        raise InputError(
            f"{what}: the operator gives measurements of shape {op.measurement_shape()}, the "
            f"file holds {mf.measurements.shape[1:]}"
        )


def _read(p: Path, h5: Any) -> MeasurementFile:
    import h5py

    what = str(p)
    attrs = h5.attrs
    fmt = string_attr(attrs.get("format"))
    if fmt != FORMAT_NAME:
        raise InputError(f"{what}: not a luser measurement file (format attribute {fmt!r})")
    version = _int_attr(attrs, "version", what)
    if version != FORMAT_VERSION:
        newer = " (written by a newer luser)" if version > FORMAT_VERSION else ""
        raise InputError(
            f"{what}: measurement format version {version}{newer}; this luser reads version "
            f"{FORMAT_VERSION}"
        )
    task = _required_str(attrs, "task", what)
    if task not in TASK_NAMES:
        raise InputError(f"{what}: unknown task {task!r}; known tasks: {', '.join(TASK_NAMES)}")
    spec = get_task(task)
    image_size = _size_attr(attrs, "image_size", what)
    channels = _int_attr(attrs, "channels", what)
    if channels != spec.channels:
        raise InputError(f"{what}: channels = {channels}, but task {task} has {spec.channels}")
    kspace_size = _size_attr(attrs, "kspace_size", what) if "kspace_size" in attrs else None
    physics = _physics_attr(attrs, task, what)
    noise = _json_attr(attrs, "noise", what) if "noise" in attrs else {}
    seed = _int_attr(attrs, "seed", what) if "seed" in attrs else -1

    for key in h5:
        if key not in _KNOWN_DATASETS:
            raise InputError(
                f"{what}: unknown dataset {key!r} (a version-1 file holds "
                f"{', '.join(_KNOWN_DATASETS)})"
            )
        if not isinstance(h5[key], h5py.Dataset):
            raise InputError(f"{what}: {key!r} must be a dataset, not a group")
    if "measurements" not in h5:
        raise InputError(f"{what}: no 'measurements' dataset")
    ds = h5["measurements"]
    if ds.dtype.kind != "f":
        raise InputError(f"{what}: measurements must be float32, got dtype {ds.dtype}")
    if ds.ndim < 2:
        raise InputError(f"{what}: measurements must be (N, ...), got shape {ds.shape}")
    check_stack_dims(ds.shape, f"{what} measurements")
    n = int(ds.shape[0])

    masks = None
    if spec.modality == "mri":
        if "masks" not in h5:
            raise InputError(f"{what}: MRI measurement file without a 'masks' dataset")
        m = h5["masks"]
        wk = (kspace_size or image_size)[1]
        if m.shape != (n, wk):
            raise InputError(f"{what}: masks has shape {m.shape}, expected {(n, wk)}")
        if m.dtype.kind not in "biuf":
            raise InputError(f"{what}: masks must be uint8, got dtype {m.dtype}")
        masks = read_dataset(m, (), f"{what} masks")
        if not np.isin(masks, (0, 1)).all():
            raise InputError(f"{what}: masks must hold only 0 and 1")
        masks = masks.astype(np.uint8)
        if (masks.sum(axis=1) == 0).any():
            raise InputError(f"{what}: a mask samples no k-space column")
    elif "masks" in h5:
        raise InputError(f"{what}: 'masks' is only valid for MRI tasks, this file is {task}")
    if kspace_size is not None and spec.modality != "mri":
        raise InputError(f"{what}: 'kspace_size' is only valid for MRI tasks")

    # the stored measurements must have the shape of the operator rebuilt from the settings:
    # compare with the cheaply computed shape here, build the operator (which validates the
    # settings) only once the data are known to fit it (:func:`_check_operator`)
    expected = _measurement_shape(task, image_size, physics, kspace_size, what)
    if tuple(ds.shape[1:]) != expected:
        raise InputError(
            f"{what}: measurements have shape {tuple(ds.shape)}, but the operator of task {task} "
            f"at {image_size[0]}x{image_size[1]} gives {(n, *expected)}"
        )
    y = read_dataset(ds, (), f"{what} measurements")
    check_finite(y, f"{what} measurements")
    y = y.astype(np.float32, copy=False)

    gt = None
    if "ground_truth" in h5:
        g = h5["ground_truth"]
        want = (n, spec.channels, *image_size)
        if g.shape != want:
            raise InputError(f"{what}: ground_truth has shape {g.shape}, expected {want}")
        if g.dtype.kind != "f":
            raise InputError(f"{what}: ground_truth must be float32, got dtype {g.dtype}")
        gt = read_dataset(g, (), f"{what} ground_truth")
        check_finite(gt, f"{what} ground_truth")
        gt = gt.astype(np.float32, copy=False)

    affine = None
    if "affine" in h5:
        a = h5["affine"]
        if a.shape != (4, 4) or a.dtype.kind != "f":
            raise InputError(f"{what}: affine must be float64 (4, 4), got {a.dtype} {a.shape}")
        affine = read_dataset(a, (), f"{what} affine").astype(np.float64)
        check_finite(affine, f"{what} affine")

    angles = None
    if "angles" in h5:
        a = h5["angles"]
        if a.ndim != 1 or a.dtype.kind != "f":
            raise InputError(f"{what}: angles must be a 1D float array, got {a.dtype} {a.shape}")
        if spec.modality == "ct" and a.shape[0] != expected[1]:
            raise InputError(
                f"{what}: {a.shape[0]} angles stored, but the sinograms have {expected[1]}"
            )
        angles = read_dataset(a, (), f"{what} angles").astype(np.float64)
        check_finite(angles, f"{what} angles")

    return MeasurementFile(
        path=p,
        task=task,
        image_size=image_size,
        channels=channels,
        physics=physics,
        measurements=y,
        ground_truth=gt,
        masks=masks,
        kspace_size=kspace_size,
        affine=affine,
        angles=angles,
        noise=noise if isinstance(noise, dict) else {},
        seed=None if seed < 0 else seed,
        source=string_attr(attrs.get("source")) or "",
        luser_version=string_attr(attrs.get("luser_version")) or "",
        created=string_attr(attrs.get("created")) or "",
        version=version,
    )


def _measurement_shape(
    task: str,
    image_size: tuple[int, int],
    physics: PhysicsSettings,
    kspace_size: tuple[int, int] | None,
    what: str,
) -> tuple[int, ...]:
    """Shape of one measurement for the stored settings, without building the operator."""
    h, w = image_size
    modality = get_task(task).modality
    if modality == "rgb":
        return (3, h, w)
    if modality == "mri":
        hk, wk = kspace_size or image_size
        return (2, hk, wk)
    from luser_cli.operators.radon import CTGeometry

    try:
        geometry = CTGeometry.lodopab(h, physics.angles_total, physics.angle_step)  # type: ignore[union-attr]
    except ConfigError as e:
        raise InputError(f"{what}: stored CT settings are invalid ({e})") from None
    return (1, geometry.n_angles, geometry.n_detectors)


# -- attribute helpers ----------------------------------------------------------------------------
def _required_str(attrs: Any, key: str, what: str) -> str:
    if key not in attrs:
        raise InputError(f"{what}: missing attribute {key!r}")
    v = string_attr(attrs[key])
    if v is None:
        raise InputError(f"{what}: attribute {key!r} must be a string")
    return v


def _int_attr(attrs: Any, key: str, what: str) -> int:
    if key not in attrs:
        raise InputError(f"{what}: missing attribute {key!r}")
    v = np.asarray(attrs[key])
    if v.size != 1 or v.dtype.kind not in "iu":
        raise InputError(f"{what}: attribute {key!r} must be an integer, got {attrs[key]!r}")
    return int(v.reshape(-1)[0])


def _size_attr(attrs: Any, key: str, what: str) -> tuple[int, int]:
    if key not in attrs:
        raise InputError(f"{what}: missing attribute {key!r}")
    v = np.asarray(attrs[key])
    if v.shape != (2,) or v.dtype.kind not in "iu":
        raise InputError(f"{what}: attribute {key!r} must be two integers (H, W), got {v!r}")
    h, w = int(v[0]), int(v[1])
    if h < 1 or w < 1:
        raise InputError(f"{what}: attribute {key!r} = {h}x{w} is not a valid size")
    check_stack_dims((1, h, w), f"{what} {key}")
    return h, w


def _json_attr(attrs: Any, key: str, what: str) -> Any:
    text = string_attr(attrs.get(key))
    if text is None:
        raise InputError(f"{what}: attribute {key!r} must be a JSON string")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what}: attribute {key!r} is not valid JSON ({e.msg})") from None


def _physics_attr(attrs: Any, task: str, what: str) -> PhysicsSettings:
    from luser_cli.physics import resolve_physics

    if "physics" not in attrs:
        raise InputError(f"{what}: missing attribute 'physics'")
    settings = _json_attr(attrs, "physics", what)
    if not isinstance(settings, dict):
        raise InputError(f"{what}: attribute 'physics' must be a JSON object")
    try:
        return resolve_physics(task, settings)
    except ConfigError as e:
        raise InputError(f"{what}: {e}") from None
