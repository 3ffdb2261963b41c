"""Reconstruct every slice of an input file with a named method and write the result.

Inputs (detected from the HDF5 content, not the file name):

- luser's measurement file (root attribute ``format = "luser-measurement"``);
- a fastMRI single-coil file (a ``kspace`` dataset): with its ``mask`` when present (test-style,
  already undersampled k-space), otherwise undersampled retrospectively with the masks of
  ``--task mri4x|mri8x`` (seeded per file name and slice); images are 320 x 320 centre crops
  (``reconstruction_esc``'s grid), written as magnitudes;
- a LoDoPaB-CT ``observation_*.hdf5`` (a ``data`` dataset ``(n, 1000, 513)``): all samples,
  reconstructed at 362 x 362 with all 1000 angles, in the ground truth's orientation.

Methods are callables ``(task, op, y) -> x`` (``y``: ``(B, *op.measurement_shape())``, ``x``:
``(B, C, H, W)`` in the task's units) looked up by name in :data:`METHODS`, a registry of
factories ``(task, options) -> method``; ``options`` holds the CLI's method options
(``tv_weight``, ``iterations``, ``checkpoint``), the resolved ``device``, the input's
``image_size`` and a ``log`` callable for one-line notes. ``model`` is the model shipped with
luser for the task, or a trained run (``--checkpoint``; refused with one line if it was trained
for another task or channel count); the others are the classical methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from luser_cli.devices import resolve_device
from luser_cli.errors import CheckpointError, ConfigError, InputError
from luser_cli.io.images import IMAGE_SUFFIXES, NIFTI_SUFFIXES, suffix_of
from luser_cli.io.validate import hdf5_errors, open_hdf5
from luser_cli.operators.base import LinearOperator
from luser_cli.tasks import get_task, tasks_reading

#: A reconstruction method: ``(task, op, y) -> x``.
Method = Callable[[str, LinearOperator, Tensor], Tensor]
#: Builds a method for a task from the user's options (raises ConfigError if it does not fit).
MethodFactory = Callable[[str, dict[str, Any]], Method]

METHODS: dict[str, MethodFactory] = {}


def register_method(name: str, factory: MethodFactory) -> None:
    """Make ``--method name`` available; ``factory(task, options)`` returns the callable."""
    METHODS[name] = factory


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str, task: str, options: dict[str, Any] | None = None) -> Method:
    """The method ``name`` for ``task``; one-line ConfigError for an unknown or unfit method."""
    get_task(task)
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name](task, dict(options or {}))


def _classical_factory(name: str) -> MethodFactory:
    def factory(task: str, options: dict[str, Any]) -> Method:
        from luser_cli.classical.methods import check_method, reconstruct_classical

        check_method(name, task)
        kwargs = {k: options[k] for k in ("tv_weight", "iterations") if options.get(k) is not None}
        if kwargs and name != "tv":
            flags = ", ".join("--" + k.replace("_", "-") for k in kwargs)
            raise ConfigError(f"{flags} only apply to --method tv, not {name}")

        def method(task: str, op: LinearOperator, y: Tensor) -> Tensor:
            return reconstruct_classical(name, task, op, y, **kwargs)

        return method

    return factory


for _name in ("input", "adjoint", "fbp", "zero-filled", "tv"):
    register_method(_name, _classical_factory(_name))


def _model_factory(task: str, options: dict[str, Any]) -> Method:
    """A trained model: ``options["checkpoint"]`` (a run folder or file, ``latest`` for the
    newest local run), else the model shipped with luser for ``task``. Announces which model it
    uses through ``options["log"]`` (one line), and a size other than the training size."""
    from luser_cli.physics import initial_estimate
    from luser_cli.runs import load_trained
    from luser_cli.shipped import resolve_model
    from luser_cli.training.checkpoint import check_compatible

    ref = resolve_model(options.get("checkpoint"), task)
    trained = load_trained(ref.path, options.get("device", "cpu"))
    size = options.get("image_size")
    if size is not None and size[0] != size[1]:
        raise CheckpointError(f"models reconstruct square images, not {size[0]}x{size[1]}")
    check_compatible(
        trained.checkpoint, task=task, channels=get_task(task).channels, source=str(trained.path)
    )
    log = options.get("log") or (lambda line: None)
    trained_size = int(trained.checkpoint["image_size"])
    note = ""
    if size is not None and size[0] != trained_size:
        # The networks are convolutional and the data steps use the input's own operator, so
        # another size runs; quality is what was measured at that size (README tables).
        note = f", trained at {trained_size}x{trained_size}, applied at {size[0]}x{size[1]}"
    log(f"model: {trained.name} for {task}, {ref.label}{note}")

    # Models are trained on images scaled to [0, 1] (fastMRI: divided by the volume max); a
    # file in raw units is scaled the same way and the result scaled back (A is linear).
    scale = float(options.get("intensity_scale") or 1.0)

    def method(task: str, op: LinearOperator, y: Tensor) -> Tensor:
        y_n = y / scale
        x0 = initial_estimate(task, op, y_n, trained.preset.model.initial)
        return trained.model(y_n, op, x0) * scale

    return method


register_method("model", _model_factory)


# -- inputs ---------------------------------------------------------------------------------------
@dataclass
class Source:
    """A validated input: ``n`` slices of ``image_size`` for ``task``; :meth:`batches` yields
    ``(start, stop, op, y)`` with ``y`` float32 ``(stop - start, *op.measurement_shape())``."""

    kind: str
    path: Path
    task: str
    n: int
    image_size: tuple[int, int]
    affine: np.ndarray | None
    batch_fn: Callable[[int, int], tuple[LinearOperator, Tensor]]
    closer: Callable[[], None] = field(default=lambda: None)
    attrs: dict[str, Any] = field(default_factory=dict)

    def batches(self, batch_size: int) -> Iterator[tuple[int, int, LinearOperator, Tensor]]:
        for start in range(0, self.n, batch_size):
            stop = min(start + batch_size, self.n)
            op, y = self.batch_fn(start, stop)
            yield start, stop, op, y

    def close(self) -> None:
        self.closer()


def _check_task_option(task: str | None, file_format: str, what: str) -> tuple[str, ...]:
    """The tasks that read ``file_format`` (:attr:`~luser_cli.tasks.TaskSpec.file_formats`);
    a one-line error if the user's ``--task`` is not one of them."""
    allowed = tasks_reading(file_format)
    if task is not None and file_format not in get_task(task).file_formats:
        raise ConfigError(f"{what} needs --task {' or '.join(allowed)}, not {task}")
    return allowed


def open_source(path: str | Path, task: str | None = None) -> Source:
    """Detect and validate an input file (see the module docstring). ``task`` is the user's
    ``--task`` (needed for fully sampled fastMRI files; checked against the others)."""
    p = Path(path)
    suffix = suffix_of(p)
    if p.is_file() and suffix in IMAGE_SUFFIXES + NIFTI_SUFFIXES:
        raise InputError(
            f"{p}: reconstruct reads measurement files (HDF5); turn images into measurements "
            "with `luser simulate` first"
        )
    from luser_cli.io.fastmri import is_fastmri
    from luser_cli.io.lodopab import lodopab_kind
    from luser_cli.io.measurement import FORMAT_NAME, string_attr

    with open_hdf5(p) as h5, hdf5_errors(p):
        fmt = string_attr(h5.attrs.get("format")) if "format" in h5.attrs else None
        keys = sorted(h5.keys())
        fastmri = is_fastmri(h5)
        lodopab = lodopab_kind(h5)
    if fmt == FORMAT_NAME:
        return _luser_source(p, task)
    if fmt is not None:
        raise InputError(f"{p}: unknown file format {fmt!r} (expected {FORMAT_NAME!r})")
    if fastmri:
        return _fastmri_source(p, task)
    if lodopab is not None or keys == ["data"]:
        return _lodopab_source(p, task)
    raise InputError(
        f"{p}: not a luser measurement file, a fastMRI single-coil file (kspace) or a LoDoPaB "
        f"observation file (data); found keys: {', '.join(keys) or 'none'}"
    )


def _luser_source(p: Path, task: str | None) -> Source:
    from luser_cli.io.measurement import read_measurement

    mf = read_measurement(p)
    if task is not None and get_task(task).name != mf.task:
        raise ConfigError(f"{p} holds {mf.task} measurements; --task {task} does not match")
    shared = None if get_task(mf.task).modality == "mri" else mf.operator()

    def batch(start: int, stop: int) -> tuple[LinearOperator, Tensor]:
        op = shared if shared is not None else mf.operator(slice(start, stop))
        return op, mf.measurements_tensor(slice(start, stop))

    return Source(
        "luser-measurement",
        p,
        mf.task,
        mf.n,
        mf.image_size,
        mf.affine,
        batch,
        attrs={"source": mf.source},
    )


def _fastmri_source(p: Path, task: str | None) -> Source:
    from luser_cli.io.fastmri import open_fastmri
    from luser_cli.physics import build_operator, mri_masks, resolve_physics

    readers = _check_task_option(task, "fastmri", "a fastMRI file")
    fm = open_fastmri(p)
    physics = resolve_physics(task) if task is not None else None
    try:
        hk, wk = fm.kspace_size
        if fm.mask is not None:
            if task is None:
                task = _task_of_acceleration(readers, fm.attrs.get("acceleration"))
            mask = torch.from_numpy(fm.mask)[None]
            op_shared = build_operator(task, fm.crop_size, masks=mask, kspace_size=(hk, wk))
        else:
            if task is None:
                choices = " or ".join(f"--task {t}" for t in readers)
                raise ConfigError(
                    f"{p} is fully sampled: pass {choices} to undersample it retrospectively"
                )
            op_shared = None
        fm.check_values()
    except BaseException:
        fm.close()
        raise
    assert task is not None

    def batch(start: int, stop: int) -> tuple[LinearOperator, Tensor]:
        from luser_cli.operators.masks import mask_seed

        if op_shared is not None:
            op = op_shared
        else:
            seeds = [mask_seed(fm.name, i) for i in range(start, stop)]
            op = build_operator(
                task,
                fm.crop_size,
                physics,
                masks=mri_masks(physics, wk, seeds),
                kspace_size=(hk, wk),
            )
        y = fm.kspace_tensor(start, stop)
        return op, op.restrict(y)

    attrs = {"source": p.name, **{k: fm.attrs[k] for k in ("acquisition",) if k in fm.attrs}}
    attrs["intensity_scale"] = fm.intensity_max()
    return Source("fastmri", p, task, fm.n_slices, fm.crop_size, None, batch, fm.close, attrs)


def _task_of_acceleration(readers: tuple[str, ...], acceleration: Any) -> str:
    """The fastMRI task whose default undersampling is ``acceleration`` (the file's), else the
    first (4x)."""
    for name in readers:
        if getattr(get_task(name).physics_defaults, "acceleration", None) == acceleration:
            return name
    return readers[0]


def _lodopab_source(p: Path, task: str | None) -> Source:
    from luser_cli.io.lodopab import LODOPAB_ANGLES, LODOPAB_IMAGE_SIZE, open_lodopab
    from luser_cli.physics import build_operator

    readers = _check_task_option(task, "lodopab", "a LoDoPaB file")
    task = task or readers[0]
    lf = open_lodopab(p)
    try:
        if lf.kind != "observation":
            raise InputError(
                f"{p}: this is a LoDoPaB ground-truth file; reconstruct the matching "
                "observation_*.hdf5"
            )
        lf.check_values()
        op = build_operator(
            task, LODOPAB_IMAGE_SIZE, {"angles_total": LODOPAB_ANGLES, "angle_step": 1}
        )
    except BaseException:
        lf.close()
        raise

    def batch(start: int, stop: int) -> tuple[LinearOperator, Tensor]:
        return op, torch.from_numpy(lf.samples(start, stop))[:, None]

    size = (LODOPAB_IMAGE_SIZE, LODOPAB_IMAGE_SIZE)
    return Source("lodopab", p, task, lf.n, size, None, batch, lf.close, {"source": p.name})


# -- the whole job --------------------------------------------------------------------------------
@dataclass
class ReconResult:
    output: Path
    kind: str
    task: str
    method: str
    n: int
    image_size: tuple[int, int]
    seconds: float


def reconstruct_file(
    input_path: str | Path,
    output_path: str | Path,
    method: str,
    *,
    task: str | None = None,
    options: dict[str, Any] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ReconResult:
    """Reconstruct all slices of ``input_path`` with ``method`` and write ``output_path``.

    Everything that can be checked (output format, device, task, method, the whole input file
    including NaN/Inf) is checked before computing; the output is written atomically at the end.
    """
    from luser_cli.io.outputs import check_output, write_images
    from luser_cli.physics import output_image

    t0 = time.perf_counter()
    check_output(output_path, (input_path,))
    dev = resolve_device(device)
    if task is not None:
        get_task(task)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    src = open_source(input_path, task)
    try:
        # factories may use the device (a learned model is loaded onto it)
        opts = {**(options or {}), "device": dev, "image_size": src.image_size, "log": log}
        opts["intensity_scale"] = src.attrs.get("intensity_scale")
        fn = get_method(method, src.task, opts)
        chunks: list[np.ndarray] = []
        with _progress(progress and src.n > 1, f"{method} on {src.path.name}", src.n) as advance:
            for start, stop, op, y in src.batches(batch_size):
                op = op.to(dev)
                with torch.no_grad():
                    x = fn(src.task, op, y.to(dev))
                    shown = output_image(src.task, x).float().cpu().numpy()
                chunks.append(shown)
                advance(stop - start)
        images = np.concatenate(chunks)
        if not np.isfinite(images).all():
            raise InputError(f"{src.path}: the {method} reconstruction produced non-finite values")
        write_images(
            output_path,
            images,
            affine=src.affine,
            attrs={"task": src.task, "method": method, "input_kind": src.kind, **src.attrs},
        )
    finally:
        src.close()
    h, w = images.shape[-2:]
    return ReconResult(
        Path(output_path), src.kind, src.task, method, src.n, (h, w), time.perf_counter() - t0
    )


class _progress:
    """A rich progress bar on stderr (only on a terminal); yields ``advance(n)``."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.description, self.total = description, total
        self.bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.bar = Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        task_id = self.bar.add_task(self.description, total=self.total)
        return lambda n: self.bar.advance(task_id, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
