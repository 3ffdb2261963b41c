"""The ``sim`` oracle (any machine): one full training step on fake tensors per batch size.

The step is the one ``luser train`` runs (see :mod:`luser_cli.memprobe.oracle`), on fake tensors
(``FakeTensorMode``: shapes, dtypes and strides, no data and no compute), with a
:class:`~luser_cli.memprobe.tracker.StorageTracker` adding up live tensor storage. What a GPU
needs beyond its tensors is the stated :class:`~luser_cli.memprobe.allowance.Allowance`.
Values that need real data (``||A||^2``, the Radon stand-in's scratch) are computed beforehand
on real tensors (:func:`prepare`). Units: bytes.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from luser_cli.errors import ConfigError
from luser_cli.memprobe.allowance import GIB, Allowance
from luser_cli.memprobe.oracle import OracleCase, affine_guess, prime_optimizer
from luser_cli.memprobe.radon_stand_in import RadonStandIn, stand_in_args
from luser_cli.memprobe.tracker import StorageTracker
from luser_cli.models.registry import count_parameters
from luser_cli.operators.base import LinearOperator
from luser_cli.physics import build_operator, initial_estimate, mri_masks
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.tasks import MRIPhysics, get_task
from luser_cli.training.batches import Batch
from luser_cli.training.config import Preset
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    clip_gradients,
    forward_backward,
)

__all__ = ["SIM_ITERATIONS", "Prepared", "SimOracle", "prepare", "sim_equilibrium"]

#: Fixed-point evaluations per solve on fake tensors. The peak does not depend on it: the
#: forward solve runs under ``no_grad`` in Anderson buffers allocated before the first
#: evaluation, and the backward keeps one recomputed block application whatever the count; the
#: first evaluation makes every large allocation (the mixing step adds only ``(B, m, m)``
#: Gram-sized tensors, and a ``(B, C*H*W)`` temporary with damping < 1, which runs under
#: ``no_grad`` far from the backward peak). Tests check that 2 and 3 evaluations peak within a
#: few KB of 1; one evaluation is ~25 % fewer simulated calls for LUSER.
SIM_ITERATIONS = 1


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


def _radon_task(task: str) -> bool:
    """Whether ``task``'s operator is the parallel-beam Radon transform (``TaskSpec.modality``
    ``ct``): the one :class:`RadonStandIn` can replace."""
    return get_task(task).modality == "ct"


def _batch_masks(preset: Preset, batch: int) -> Tensor | None:
    """Per-item MRI masks ``(batch, W)`` seeded by item index, as ``BatchMaker`` does."""
    physics = preset.physics_settings()
    if not isinstance(physics, MRIPhysics):
        return None
    return mri_masks(physics, preset.image_size, list(range(batch)))


@dataclass(frozen=True)
class Prepared:
    """Values of one (task, image size, physics) computed on real tensors before simulating.

    ``norm_sq``: ``||A||^2`` of the task operator (one mask, seed 0, for MRI: what
    ``luser train`` uses for the step scale ``1 / ||A||^2``); ``radon``: the constructor
    arguments of :class:`RadonStandIn` but ``norm_sq`` (CT with the stand-in), else None.
    Picklable, so a parent process can prepare once for its workers.
    """

    norm_sq: float
    radon: dict[str, Any] | None = None


_PREPARED: dict[tuple[str, int, str, str], Prepared] = {}


def prepare(preset: Preset, radon: str = "stand-in") -> Prepared:
    """The :class:`Prepared` values of ``preset`` (cached for the process; CT at 362 px takes
    ~10 s: power iteration and one measured application of the real Radon transform)."""
    key = (preset.task, preset.image_size, json.dumps(preset.physics, sort_keys=True), radon)
    if key not in _PREPARED:
        op = build_operator(preset.task, preset.image_size, preset.physics)
        norm_sq = float(op.norm_sq())
        args = None
        if _radon_task(preset.task) and radon == "stand-in":
            args = stand_in_args(preset)
        _PREPARED[key] = Prepared(norm_sq=norm_sq, radon=args)
    return _PREPARED[key]


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


class SimOracle(OracleCase):
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
        self._set_case(task, model_name, image_size, allowance, preset)
        if radon not in ("stand-in", "real"):
            raise ConfigError(f"radon must be 'stand-in' or 'real', got {radon!r}")
        self.iterations = iterations
        self.equilibrium = sim_equilibrium(self.preset.solver, iterations)
        self.radon = radon
        self.prepared = prepared
        self._seconds: dict[int, float] = {}
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
        return affine_guess(
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
            "ct_operator": self.radon if _radon_task(self.task) else None,
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
        mri = isinstance(preset.physics_settings(), MRIPhysics)
        # Built on real tensors, then made fake: the same modules and shapes, but spectral
        # norm's 15 initial power iterations per convolution take seconds on fake tensors.
        model = build_training_model(
            preset, self.model_name, step_scale=step_scale, equilibrium=self.equilibrium
        )
        mode = FakeTensorMode()
        tracker = StorageTracker(self.allowance.block_bytes)
        with mode, tracker:
            model._apply(mode.from_tensor)
            tracker.track(list(model.parameters()), list(model.buffers()))
            model.train()
            optimizer = build_optimizer(model, preset.train)
            _gpu_optimizer_defaults(optimizer)
            prime_optimizer(model, optimizer)
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
                y = op.restrict(op.A(x))  # noise-free: noisy y has the same shape
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
