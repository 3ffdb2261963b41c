"""``fits(batch)`` oracles: does one training step at this batch size fit a GPU of N GB?

Both oracles run ONE FULL TRAINING STEP exactly as ``luser train`` does, through the same
functions of :mod:`luser_cli.training.step`: the model from :func:`build_training_model` for
the preset as the trainer resolves it for that model (``Preset.for_model``: DEQ4IP's
fixed-affine norm and anchor of new runs), the optimiser from :func:`build_optimizer`,
:func:`forward_backward` (zero grad, forward, loss, backward), :func:`clip_gradients` and
``optimizer.step()``. Before the measured step the optimiser's state is allocated by one
zero-gradient step (:func:`prime_optimizer`), so the step measured is a steady-state step
(Adam's two moment buffers per parameter exist from the second step of training on).

* :class:`~luser_cli.memprobe.cuda_oracle.CudaOracle` (``cuda``): the real thing on a GPU. The
  process is capped at the capacity with ``torch.cuda.set_per_process_memory_fraction``; the
  step either runs or raises ``torch.cuda.OutOfMemoryError``; memory is freed between probes.
* :class:`~luser_cli.memprobe.sim_oracle.SimOracle` (``sim``, any machine): the same step on fake
  tensors (``FakeTensorMode``: shapes, dtypes and strides, no data and no compute), with a
  :class:`~luser_cli.memprobe.tracker.StorageTracker` adding up live tensor storage. What a GPU
  needs beyond its tensors is the stated :class:`~luser_cli.memprobe.allowance.Allowance`.

This module holds what both share: the :class:`Oracle` protocol that
:mod:`luser_cli.memprobe.probe` searches with, :func:`prime_optimizer` and :func:`affine_guess`.
Units: bytes.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from luser_cli.memprobe.allowance import Allowance
from luser_cli.models.registry import check_model_name
from luser_cli.tasks import get_task
from luser_cli.training.config import Preset

__all__ = ["Oracle", "affine_guess", "prime_optimizer"]


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


def prime_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Allocate the optimiser state with one zero-gradient step (parameters do not move for
    Adam/AdamW without weight decay; with weight decay they shrink by ``lr * wd``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def affine_guess(
    points: dict[int, int], static_bytes: int | None, budget_bytes: float
) -> int | None:
    """Largest ``b`` with ``a + s b <= budget`` for the line through the two largest measured
    batches (or through ``(0, static_bytes)`` and the only one). None without data.

    ``points``: batch size -> peak bytes; ``static_bytes`` and ``budget_bytes`` in bytes.
    """
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


class OracleCase:
    """What both oracles hold: one (task, model, preset) case, its allowance and its caches."""

    def _set_case(
        self,
        task: str,
        model_name: str,
        image_size: int | None,
        allowance: Allowance | None,
        preset: Preset | None,
    ) -> None:
        """Check the task and model (one-line errors) and set the case: the probed preset
        (:func:`luser_cli.memprobe.presets.probe_preset` unless given) as ``luser train``
        trains it for this model (``Preset.for_model``: e.g. DEQ4IP's ``model.deq4ip_norm``
        and ``model.deq4ip_anchor`` of new runs), its image size, the allowance, and empty
        caches."""
        from luser_cli.memprobe.presets import probe_preset

        get_task(task)
        check_model_name(model_name)
        self.task = task
        self.model_name = model_name
        base = preset if preset is not None else probe_preset(task, image_size)
        self.preset = base.for_model(model_name)  # what `luser train` builds (Trainer)
        self.image_size = self.preset.image_size
        self.allowance = allowance if allowance is not None else Allowance()
        self._peaks: dict[int, int] = {}
        self._session: dict[str, Any] | None = None
        self._parameters: int | None = None
        self.static_bytes: int | None = None
