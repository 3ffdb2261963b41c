"""``fits(batch)`` oracles: does one training step at this batch size fit a GPU of N GB?

Both oracles run ONE FULL TRAINING STEP exactly as ``luser train`` does, through the same
functions of :mod:`luser_cli.training.step`: the model from :func:`build_training_model`, the
optimiser from :func:`build_optimizer`, :func:`forward_backward` (zero grad, forward, loss,
backward), :func:`clip_gradients` and ``optimizer.step()``. Before the measured step the
optimiser's state is allocated by one zero-gradient step, so the step measured is a steady-state
step (Adam's two moment buffers per parameter exist from the second step of training on).

* :class:`CudaOracle` (``cuda``): the real thing on a GPU. The process is capped at the
  capacity with ``torch.cuda.set_per_process_memory_fraction``; the step either runs or raises
  ``torch.cuda.OutOfMemoryError``; memory is freed between probes.
* :class:`SimOracle` (``sim``, any machine): the same step on fake tensors
  (``FakeTensorMode``: shapes, dtypes and strides, no data and no compute), with a
  :class:`~luser_cli.memprobe.tracker.StorageTracker` adding up live tensor storage. What a GPU
  needs beyond its tensors is the stated :class:`Allowance`.

Units: bytes inside; "GB" in the user interface means GiB (``2**30`` bytes), the unit GPU
makers use for memory capacity ("an 8 GB card" holds 8 GiB).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from luser_cli.errors import ConfigError
from luser_cli.memprobe.tracker import StorageTracker
from luser_cli.models.registry import check_model_name, count_parameters
from luser_cli.operators.base import LinearOperator
from luser_cli.operators.radon import CTGeometry
from luser_cli.physics import build_operator, initial_estimate, mri_masks
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.tasks import MRIPhysics, get_task
from luser_cli.training.batches import Batch
from luser_cli.training.config import (
    Preset,
    apply_overrides,
    paper_preset_for_task,
    preset_for_task,
)
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    clip_gradients,
    forward_backward,
)

__all__ = [
    "GIB",
    "RECIPES",
    "Allowance",
    "CudaOracle",
    "Oracle",
    "Prepared",
    "RadonStandIn",
    "SimOracle",
    "check_recipe",
    "prepare",
    "probe_preset",
    "sim_equilibrium",
]

GIB = 2**30

#: Fixed-point evaluations per solve on fake tensors. The peak does not depend on it: the
#: forward solve runs under ``no_grad`` in Anderson buffers allocated before the first
#: evaluation, and the backward keeps one recomputed block application whatever the count; the
#: first evaluation makes every large allocation (the mixing step adds only ``(B, m, m)``
#: Gram-sized tensors, and a ``(B, C*H*W)`` temporary with damping < 1, which runs under
#: ``no_grad`` far from the backward peak). Tests check that 2 and 3 evaluations peak within a
#: few KB of 1; one evaluation is ~25 % fewer simulated calls for LUSER.
SIM_ITERATIONS = 1


@dataclass(frozen=True)
class Allowance:
    """What a GPU needs beyond the peak of live tensor storage (``sim`` backend).

    ``required = context_gb GiB + (1 + fragmentation) * peak``, where ``peak`` counts every
    storage rounded up to ``block_bytes``.

    * ``context_gb`` (default 0.5): memory outside PyTorch's caching allocator that a training
      process holds on the card: the CUDA context with the kernels of PyTorch, cuDNN and cuBLAS
      (about 0.3-0.5 GiB with CUDA's lazy module loading, the default since CUDA 11.7/12), the
      cuBLAS workspaces and cuDNN handles. (cuDNN convolution workspaces are allocated through
      the caching allocator and shrink when memory is short: PyTorch falls back to algorithms
      that need less workspace instead of failing.)
    * ``fragmentation`` (default 0.10): the caching allocator carves blocks out of 2 MiB
      segments (requests up to 1 MiB), 20 MiB segments (1-10 MiB) or segments of the request
      rounded up to 2 MiB (larger); a request fails when no free segment part is large
      enough, so the reserved memory at the peak exceeds the allocated bytes by the partly
      used segments. 10 % is a typical reserved/allocated ratio for training steps dominated by
      large activations.
    * ``block_bytes`` (default 512): every allocation is rounded up to a multiple of 512 bytes
      (the allocator's smallest block), exactly as ``torch.cuda.memory_allocated`` counts it.

    The ``cuda`` backend uses only ``context_gb``: the capacity given to the allocator is
    ``N GiB - context_gb`` (the context of a real N GB card lives in the same N GB).
    """

    context_gb: float = 0.5
    fragmentation: float = 0.10
    block_bytes: int = 512

    def __post_init__(self) -> None:
        if not (math.isfinite(self.context_gb) and self.context_gb >= 0):
            raise ConfigError(f"--context-gb must be a number >= 0, got {self.context_gb}")
        if not (math.isfinite(self.fragmentation) and self.fragmentation >= 0):
            raise ConfigError(f"--fragmentation must be a number >= 0, got {self.fragmentation}")
        if self.block_bytes < 1:
            raise ConfigError(f"block size must be at least 1 byte, got {self.block_bytes}")

    @property
    def context_bytes(self) -> int:
        return round(self.context_gb * GIB)

    def required_bytes(self, peak_bytes: int) -> int:
        """GPU memory a step whose live tensors peak at ``peak_bytes`` needs, bytes."""
        return self.context_bytes + math.ceil(peak_bytes * (1.0 + self.fragmentation))

    def tensor_budget(self, capacity_bytes: int) -> float:
        """The largest peak of live tensors that fits ``capacity_bytes`` (may be negative)."""
        return (capacity_bytes - self.context_bytes) / (1.0 + self.fragmentation)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Oracle(Protocol):
    """What :mod:`luser_cli.memprobe.probe` needs from a backend."""

    backend: str
    task: str
    model_name: str
    image_size: int
    allowance: Allowance

    @property
    def parameters(self) -> int: ...

    def fits(self, batch: int, capacity_bytes: int) -> bool:
        """Does one training step with ``batch`` samples fit ``capacity_bytes`` of GPU?"""
        ...

    def peak_bytes(self, batch: int) -> int | None:
        """Measured peak of allocated tensor memory at ``batch`` (None if never measured)."""
        ...

    def guess(self, capacity_bytes: int) -> int | None:
        """A prediction of the largest fitting batch from the measurements so far."""
        ...

    def summary(self) -> dict[str, Any]:
        """Extra per-model facts for the JSON rows (static bytes, per-sample bytes, ...)."""
        ...


# -- presets ------------------------------------------------------------------------------------
#: Which shipped preset the probe measures: the task's own (what ``luser train`` trains) or
#: the paper's recipe (``ct-paper`` for CT; the same preset for the other tasks).
RECIPES: tuple[str, ...] = ("shipped", "paper")


def check_recipe(recipe: str) -> str:
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return recipe


def probe_preset(
    task: str, image_size: int | None = None, graph: str | None = None, recipe: str = "shipped"
) -> Preset:
    """The ``recipe`` preset of ``task`` (:data:`RECIPES`), at ``image_size`` and with the
    equilibrium layers' ``solver.graph`` (``recompute`` or ``keep``) if given."""
    check_recipe(recipe)
    preset = preset_for_task(task) if recipe == "shipped" else paper_preset_for_task(task)
    overrides: dict[str, Any] = {}
    if image_size is not None and image_size != preset.image_size:
        overrides["image_size"] = int(image_size)
    if graph is not None:
        overrides["solver.graph"] = graph
    return apply_overrides(preset, overrides) if overrides else preset


def sim_equilibrium(cfg: EquilibriumConfig, iterations: int = SIM_ITERATIONS) -> EquilibriumConfig:
    """``cfg`` with forward and backward solves of exactly ``iterations`` evaluations."""
    if iterations < 1:
        raise ConfigError(f"fixed-point iterations must be at least 1, got {iterations}")
    fixed = cfg.with_fixed_iterations()
    return fixed.model_copy(
        update={
            "forward": fixed.forward.model_copy(update={"max_iter": iterations}),
            "backward": fixed.backward.model_copy(update={"max_iter": iterations}),
        }
    )


def _batch_masks(preset: Preset, batch: int) -> Tensor | None:
    """Per-item MRI masks ``(batch, W)`` seeded by item index, as ``BatchMaker`` does."""
    physics = preset.physics_model()
    if not isinstance(physics, MRIPhysics):
        return None
    return mri_masks(physics, preset.image_size, list(range(batch)))


@dataclass(frozen=True)
class Prepared:
    """Values of one (task, image size, physics) computed on real tensors before simulating.

    ``norm_sq``: ``||A||^2`` of the task operator (one mask, seed 0, for MRI: what
    ``luser train`` uses for the step scale ``1 / ||A||^2``); ``radon``: the constructor
    arguments of :class:`RadonStandIn` (CT with the stand-in), else None. Picklable, so a
    parent process can prepare once for its workers.
    """

    norm_sq: float
    radon: dict[str, Any] | None = None


_PREPARED: dict[tuple[str, int, str, str], Prepared] = {}


def prepare(preset: Preset, radon: str = "stand-in") -> Prepared:
    """The :class:`Prepared` values of ``preset`` (cached for the process; CT at 362 px takes
    ~10 s: power iteration and one measured application of the real Radon transform)."""
    import json

    key = (preset.task, preset.image_size, json.dumps(preset.physics, sort_keys=True), radon)
    if key not in _PREPARED:
        op = build_operator(preset.task, preset.image_size, preset.physics)
        norm_sq = float(op.norm_sq())
        args = None
        if preset.task == "ct" and radon == "stand-in":
            args = _radon_stand_in_args(preset)
        _PREPARED[key] = Prepared(norm_sq=norm_sq, radon=args)
    return _PREPARED[key]


def _prime_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Allocate the optimiser state with one zero-gradient step (parameters do not move for
    Adam/AdamW without weight decay; with weight decay they shrink by ``lr * wd``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _gpu_optimizer_defaults(optimizer: torch.optim.Optimizer) -> None:
    """Ask for the implementation PyTorch picks for CUDA parameters when none was chosen.

    Adam/AdamW default to their ``foreach`` (multi-tensor) implementation on a GPU, but fall
    back to a per-parameter loop for tensor subclasses such as fake tensors. Same state and
    result; the multi-tensor version's temporaries (a few parameter-sized lists) are what a GPU
    holds, and it is ~25 % fewer simulated calls for LUSER-DW's 177 parameter tensors.
    """
    for group in optimizer.param_groups:
        if "foreach" in group and group["foreach"] is None:
            group["foreach"] = True


def _affine_guess(
    points: dict[int, int], static_bytes: int | None, budget_bytes: float
) -> int | None:
    """Largest ``b`` with ``a + s b <= budget`` for the line through the two largest measured
    batches (or through ``(0, static_bytes)`` and the only one). None without data."""
    if not points:
        return None
    batches = sorted(points)
    b1 = batches[-1]
    if len(batches) >= 2:
        b0 = batches[-2]
        p0 = points[b0]
    elif static_bytes is not None:
        b0, p0 = 0, static_bytes
    else:
        return None
    slope = (points[b1] - p0) / (b1 - b0)
    if slope <= 0:
        return None
    intercept = points[b1] - slope * b1
    return max(1, math.floor((budget_bytes - intercept) / slope))


# -- the simulated oracle -----------------------------------------------------------------------
class _ShapeOnly(torch.autograd.Function):
    """``out = new_empty(out_shape)`` plus a transient scratch of ``scratch`` bytes (live with
    ``out``), saving no tensor for backward; its backward is the same the other way round."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        out_shape: tuple[int, ...],
        scratch: int,
        back_scratch: int,
    ) -> Tensor:
        ctx.in_shape = tuple(x.shape)
        ctx.scratch, ctx.back_scratch = scratch, back_scratch
        out = x.new_empty(out_shape)
        if scratch > 0:  # alive together with the output, as in the real operator
            work = x.new_empty(scratch // x.element_size())
            del work
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        return _ShapeOnly.apply(grad, ctx.in_shape, ctx.back_scratch, ctx.scratch), None, None, None


class RadonStandIn(LinearOperator):
    """A shape-and-memory double of :class:`~luser_cli.operators.radon.ParallelBeamRadon` for
    fake tensors. The real operator runs there too, with the same peak, but slowly at 362 px:
    it splits an application into up to 200 chunks of ``grid_sample`` calls (more chunks for
    larger batches), each a Python decomposition on fake tensors (measured: ~13 s for one
    ``A`` and one ``A^T`` at batch 1, ~70 s at batch 64, against a few ms here).

    ``A`` / ``A_adjoint`` return tensors of the real operator's shapes and dtype, allocate a
    transient scratch, and save nothing for backward. What that assumes, exactly:

    * the real operator's autograd functions (``_Project`` / ``_BackProject``) save no tensor
      for backward (they keep a reference to the operator only) and their backward is the
      other direction: true of ``radon.py``;
    * its buffers are ``angles`` (float64, one per angle), reproduced here;
    * its transient memory within one application (grid buffer, ``grid_sample`` samples of one
      chunk of angles, the concatenated output) is ``scratch(b) = min(s1 (2 + b) / 3,
      max(s1, chunk))`` bytes for a batch of ``b``, with ``s1`` measured on the real
      operator (real tensors, ``grid`` backend) at batch 1 for this geometry and ``chunk`` its
      per-chunk temporary budget (48 MiB): ``radon.py`` sizes a chunk of angles by
      ``(2 + b) * N * itemsize`` bytes per ray up to that budget. Measured at 362 px for
      b = 1..32 the real scratch is 24-46 MiB (model: 34-48 MiB); at 48 px it is within 6 %.
      It never meets the peak of a training step anyway (the peak is in the network's
      backward): at 40 and 128 px, training steps with this double and with the real operator
      on fake tensors peak at the same byte;
    * the ``grid`` backend: what ``auto`` picks above ~140 px (the 362 px preset). Below that,
      on a GPU, ``auto`` keeps cached sparse matrices resident instead (~26 MB at 64 px,
      ~106 MB at 128 px), which this double does not count.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        measurement_shape: tuple[int, ...],
        geometry: CTGeometry,
        scratch_one: tuple[int, int],
        chunk_bytes: int,
        norm_sq: float,
    ) -> None:
        super().__init__(image_shape)
        self._measurement_shape = tuple(measurement_shape)
        #: The real geometry: filtered back-projection (an FBP start or data step) reads it.
        self.geometry = geometry
        self.register_buffer("angles", torch.zeros(geometry.n_angles, dtype=torch.float64))
        self.scratch_one = scratch_one
        self.chunk_bytes = chunk_bytes
        self._norm_sq = norm_sq

    def measurement_shape(self) -> tuple[int, ...]:
        return self._measurement_shape

    def scratch(self, batch: int, adjoint: bool) -> int:
        s1 = self.scratch_one[1 if adjoint else 0]
        return int(min(s1 * (2 + batch) / 3, max(s1, self.chunk_bytes)))

    def _A(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        shape = (b, *self._measurement_shape)
        return _ShapeOnly.apply(x, shape, self.scratch(b, False), self.scratch(b, True))

    def _A_adjoint(self, y: Tensor) -> Tensor:
        b = y.shape[0]
        shape = (b, *self.image_shape)
        return _ShapeOnly.apply(y, shape, self.scratch(b, True), self.scratch(b, False))


def _radon_scratch(preset: Preset) -> tuple[int, int]:
    """Transient bytes of one real ``A`` and one real ``A^T`` at batch 1 (``grid`` backend)."""
    op = build_operator(preset.task, preset.image_size, preset.physics)
    op.backend = "grid"  # type: ignore[attr-defined]
    x = torch.zeros(1, *op.image_shape)
    with torch.no_grad(), StorageTracker() as tracker:
        y = op.A(x)
        forward = tracker.peak - tracker.live
        tracker.reset_peak()
        z = op.A_adjoint(y)
        adjoint = tracker.peak - tracker.live
        del z
    return forward, adjoint


def _radon_stand_in_args(preset: Preset) -> dict[str, Any]:
    """Constructor arguments of :class:`RadonStandIn` for ``preset`` (real tensors; call
    outside the fake mode)."""
    from luser_cli.operators import radon

    real = build_operator(preset.task, preset.image_size, preset.physics)
    scratch = _radon_scratch(preset)
    return {
        "image_shape": real.image_shape,
        "measurement_shape": real.measurement_shape(),
        "geometry": real.geometry,  # type: ignore[attr-defined]
        "scratch_one": scratch,
        "chunk_bytes": int(getattr(radon, "_CHUNK_BYTES", 48 * 2**20)),
    }


class SimOracle:
    """The ``sim`` backend for one (task, model, image size): simulated peaks per batch size.

    One fake-tensor session (mode, tracker, model, optimiser, operator) is built on first use
    and reused for every batch size; each :meth:`peak_bytes` runs one full training step on
    fake tensors and is cached, so one simulated peak answers every capacity.

    Data-dependent values are computed beforehand on real tensors: ``||A||^2`` (the model's
    step scale and the initial estimate's divisor) and the MRI masks. Fixed-point solvers run
    exactly ``iterations`` evaluations (``EquilibriumConfig.with_fixed_iterations``).

    The model is built by :func:`build_training_model` on real tensors and then converted to
    fake ones inside the mode (``model._apply(mode.from_tensor)``), its parameters and buffers
    registered with the tracker: the same modules, shapes and bytes as building it inside the
    mode, without spectral norm's initial power iterations on fake tensors (seconds per model).
    The optimiser and its state are created inside the mode.

    ``radon``: ``"stand-in"`` (default) replaces the CT operator by :class:`RadonStandIn`;
    ``"real"`` runs the real operator on fake tensors (same peak; 10-100 s per step at 362 px
    and large batches, where it splits every application into hundreds of chunks).
    """

    backend = "sim"

    def __init__(
        self,
        task: str,
        model_name: str,
        image_size: int | None = None,
        *,
        allowance: Allowance | None = None,
        iterations: int = SIM_ITERATIONS,
        preset: Preset | None = None,
        radon: str = "stand-in",
        prepared: Prepared | None = None,
    ) -> None:
        get_task(task)
        check_model_name(model_name)
        if radon not in ("stand-in", "real"):
            raise ConfigError(f"radon must be 'stand-in' or 'real', got {radon!r}")
        self.task = task
        self.model_name = model_name
        self.preset = preset if preset is not None else probe_preset(task, image_size)
        self.image_size = self.preset.image_size
        self.allowance = allowance if allowance is not None else Allowance()
        self.iterations = iterations
        self.equilibrium = sim_equilibrium(self.preset.solver, iterations)
        self.radon = radon
        self.prepared = prepared
        self._peaks: dict[int, int] = {}
        self._seconds: dict[int, float] = {}
        self._session: dict[str, Any] | None = None
        self._parameters: int | None = None
        self.static_bytes: int | None = None
        if self.preset.train.bf16:
            raise ConfigError("the sim backend does not simulate bf16 autocast; use --backend cuda")

    # -- Oracle interface ----------------------------------------------------------------------
    @property
    def parameters(self) -> int:
        if self._parameters is None:
            self._open()
        assert self._parameters is not None
        return self._parameters

    def fits(self, batch: int, capacity_bytes: int) -> bool:
        return self.allowance.required_bytes(self.simulate(batch)) <= capacity_bytes

    def peak_bytes(self, batch: int) -> int | None:
        return self._peaks.get(batch)

    def guess(self, capacity_bytes: int) -> int | None:
        return _affine_guess(
            self._peaks, self.static_bytes, self.allowance.tensor_budget(capacity_bytes)
        )

    def summary(self) -> dict[str, Any]:
        per_sample = None
        if len(self._peaks) >= 2:
            b = sorted(self._peaks)
            per_sample = (self._peaks[b[-1]] - self._peaks[b[-2]]) / (b[-1] - b[-2])
        elif self._peaks and self.static_bytes is not None:
            (b1, p1) = next(iter(self._peaks.items()))
            per_sample = (p1 - self.static_bytes) / b1
        return {
            "static_gb": None if self.static_bytes is None else self.static_bytes / GIB,
            "per_sample_gb": None if per_sample is None else per_sample / GIB,
            "simulated_batches": sorted(self._peaks),
            "sim_seconds": round(sum(self._seconds.values()), 2),
            "fixed_point_iterations": self.iterations,
            "ct_operator": self.radon if self.task == "ct" else None,
        }

    # -- simulation ----------------------------------------------------------------------------
    def simulate(self, batch: int) -> int:
        """Peak of live tensor storage (bytes, ``block_bytes``-rounded) of one training step
        with ``batch`` samples; cached."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if batch not in self._peaks:
            start = time.perf_counter()
            self._peaks[batch] = self._run_step(batch)
            self._seconds[batch] = time.perf_counter() - start
        return self._peaks[batch]

    def _open(self) -> dict[str, Any]:
        """Build the fake session: model, optimiser (state allocated), fixed operator."""
        if self._session is not None:
            return self._session
        from torch._subclasses.fake_tensor import FakeTensorMode

        preset = self.preset
        prepared = self.prepared if self.prepared is not None else prepare(preset, self.radon)
        step_scale = 1.0 / prepared.norm_sq
        mri = isinstance(preset.physics_model(), MRIPhysics)
        # Built on real tensors, then made fake: the same modules and shapes, but spectral
        # norm's 15 initial power iterations per convolution take seconds on fake tensors.
        model = build_training_model(preset, self.model_name, step_scale, self.equilibrium)
        mode = FakeTensorMode()
        tracker = StorageTracker(self.allowance.block_bytes)
        with mode, tracker:
            model._apply(mode.from_tensor)
            tracker.track(list(model.parameters()), list(model.buffers()))
            model.train()
            optimizer = build_optimizer(model, preset.train)
            _gpu_optimizer_defaults(optimizer)
            _prime_optimizer(model, optimizer)
            op: LinearOperator | None = None  # MRI: one per batch (per-item masks)
            if prepared.radon is not None:
                op = RadonStandIn(**prepared.radon, norm_sq=prepared.norm_sq)
            elif not mri:
                op = build_operator(preset.task, preset.image_size, preset.physics)
                op._norm_sq = prepared.norm_sq  # the real value, computed on real tensors
        self._parameters = count_parameters(model)
        self.static_bytes = tracker.live
        self._session = {
            "mode": mode,
            "tracker": tracker,
            "model": model,
            "optimizer": optimizer,
            "op": op,
            "norm_sq": prepared.norm_sq,
        }
        return self._session

    def _mri_masks(self, batch: int) -> Tensor | None:
        """Per-item MRI masks ``(batch, W)`` (real tensors, made outside the fake mode); None
        for a fixed operator."""
        return _batch_masks(self.preset, batch)

    def _operator(self, batch: int, masks: Tensor | None) -> LinearOperator:
        """The batch's operator; call inside the fake mode.

        For MRI the divisor of the initial estimate, ``||A||^2`` of the batch's operator, is a
        value that cannot change any shape or allocation; the one-mask value is used (exactly 1
        unless k-space is zero-padded) instead of an eigenvalue problem per item and batch.
        """
        s = self._session
        assert s is not None
        if masks is None:
            return s["op"]
        op = build_operator(
            self.preset.task,
            self.preset.image_size,
            self.preset.physics,
            masks=s["mode"].from_tensor(masks),
        )
        op._norm_sq = s["norm_sq"]
        return op

    def _run_step(self, batch: int) -> int:
        s = self._open()
        mode, tracker = s["mode"], s["tracker"]
        model, optimizer = s["model"], s["optimizer"]
        train = self.preset.train
        channels = get_task(self.task).channels
        size = self.image_size
        masks = self._mri_masks(batch)
        with mode, tracker:
            tracker.reset_peak()
            op = self._operator(batch, masks)
            x = torch.rand(batch, channels, size, size)
            with torch.no_grad():
                y = op.A(x)
                if hasattr(op, "restrict"):
                    y = op.restrict(y)
                x0 = initial_estimate(self.task, op, y, self.preset.model.initial)
            data = Batch(x=x, y=y, x0=x0, op=op)
            del x, y, x0
            output, loss = forward_backward(model, optimizer, data, train, torch.device("cpu"))
            clip_gradients(model, train)
            optimizer.step()
            del output, loss, data, op
            peak = tracker.peak
        gc.collect()
        return peak


# -- the CUDA oracle ----------------------------------------------------------------------------
def _free_cuda() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


class CudaOracle:
    """The ``cuda`` backend for one (task, model, image size): real training steps on a GPU
    capped at each capacity.

    The model and optimiser (state allocated) are built once and stay on the GPU; each probe
    builds a batch with :class:`~luser_cli.training.batches.BatchMaker` (the training data
    path: simulated measurements, per-item MRI masks), sets the cap, frees the cache, runs one
    step and reports whether it raised ``torch.cuda.OutOfMemoryError``. Answers are cached per
    (batch, capacity) and combined by monotonicity (a batch that fits a capacity fits a larger
    one). The peak of a step that fits is ``torch.cuda.max_memory_allocated``.
    """

    backend = "cuda"

    def __init__(
        self,
        task: str,
        model_name: str,
        image_size: int | None = None,
        *,
        allowance: Allowance | None = None,
        preset: Preset | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not torch.cuda.is_available():
            raise ConfigError("--backend cuda needs a CUDA GPU; none is available (try sim)")
        get_task(task)
        check_model_name(model_name)
        self.task = task
        self.model_name = model_name
        self.preset = preset if preset is not None else probe_preset(task, image_size)
        self.image_size = self.preset.image_size
        self.allowance = allowance if allowance is not None else Allowance()
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        self._answers: dict[tuple[int, int], bool] = {}
        self._peaks: dict[int, int] = {}
        self._session: dict[str, Any] | None = None
        self._parameters: int | None = None
        self.static_bytes: int | None = None

    @property
    def parameters(self) -> int:
        if self._parameters is None:
            self._open()
        assert self._parameters is not None
        return self._parameters

    @property
    def total_bytes(self) -> int:
        return int(torch.cuda.get_device_properties(self.device).total_memory)

    def _open(self) -> dict[str, Any]:
        if self._session is not None:
            return self._session
        from luser_cli.training.batches import BatchMaker

        preset = self.preset
        torch.cuda.set_per_process_memory_fraction(1.0, self.device)
        maker = BatchMaker.for_preset(preset, self.device)
        model = build_training_model(preset, self.model_name, 1.0 / maker.norm_sq()).to(self.device)
        model.train()
        optimizer = build_optimizer(model, preset.train)
        _prime_optimizer(model, optimizer)
        _free_cuda()
        self._parameters = count_parameters(model)
        self.static_bytes = int(torch.cuda.memory_allocated(self.device))
        self._session = {"maker": maker, "model": model, "optimizer": optimizer}
        return self._session

    def _known(self, batch: int, capacity: int) -> bool | None:
        for (b, c), ok in self._answers.items():
            if ok and b >= batch and c <= capacity:
                return True
            if not ok and b <= batch and c >= capacity:
                return False
        return None

    def fits(self, batch: int, capacity_bytes: int) -> bool:
        known = self._known(batch, capacity_bytes)
        if known is not None:
            return known
        s = self._open()
        allowed = capacity_bytes - self.allowance.context_bytes
        fraction = allowed / self.total_bytes
        if fraction <= 0:
            ok = False
        elif fraction > 1:
            raise ConfigError(
                f"--gpu-gb {capacity_bytes / GIB:g} is more than this GPU's "
                f"{self.total_bytes / GIB:.1f} GiB; the cuda backend can only emulate smaller cards"
            )
        else:
            torch.cuda.set_per_process_memory_fraction(fraction, self.device)
            ok = self._try_step(s, batch)
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
        self._answers[(batch, capacity_bytes)] = ok
        return ok

    def _try_step(self, s: dict[str, Any], batch: int) -> bool:
        _free_cuda()
        try:
            self._step(s, batch)
        except torch.cuda.OutOfMemoryError:
            ok = False
        except RuntimeError as e:  # cuDNN / cuBLAS report failed allocations as RuntimeError
            if "out of memory" not in str(e).lower() and "alloc_failed" not in str(e).lower():
                raise
            ok = False
        else:
            ok = True
            self._peaks[batch] = int(torch.cuda.max_memory_allocated(self.device))
        s["optimizer"].zero_grad(set_to_none=True)
        _free_cuda()
        return ok

    def _step(self, s: dict[str, Any], batch: int) -> None:
        preset = self.preset
        channels = get_task(self.task).channels
        size = self.image_size
        x = torch.rand(batch, channels, size, size, device=self.device)
        meta = {"index": torch.arange(batch)}
        data = s["maker"].make(x, meta, epoch=0, seed=preset.train.seed)
        del x
        output, loss = forward_backward(s["model"], s["optimizer"], data, preset.train, self.device)
        clip_gradients(s["model"], preset.train)
        s["optimizer"].step()
        torch.cuda.synchronize(self.device)
        del output, loss, data

    def peak_bytes(self, batch: int) -> int | None:
        return self._peaks.get(batch)

    def guess(self, capacity_bytes: int) -> int | None:
        return _affine_guess(
            self._peaks, self.static_bytes, capacity_bytes - self.allowance.context_bytes
        )

    def summary(self) -> dict[str, Any]:
        return {
            "static_gb": None if self.static_bytes is None else self.static_bytes / GIB,
            "device_name": torch.cuda.get_device_name(self.device),
            "device_total_gb": self.total_bytes / GIB,
        }
