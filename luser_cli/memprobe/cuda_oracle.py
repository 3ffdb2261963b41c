"""The ``cuda`` oracle: real training steps on a GPU capped at each capacity.

The step is the one ``luser train`` runs (see :mod:`luser_cli.memprobe.oracle`). The process is
capped at the capacity with ``torch.cuda.set_per_process_memory_fraction``; the step either
runs or raises ``torch.cuda.OutOfMemoryError``; memory is freed between probes. Of the
:class:`~luser_cli.memprobe.allowance.Allowance` only ``context_gb`` is used: the capacity given
to the allocator is ``N GiB - context_gb`` (the context of a real N GB card lives in the same
N GB). Units: bytes.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

from luser_cli.errors import ConfigError
from luser_cli.memprobe.allowance import GIB, Allowance
from luser_cli.memprobe.oracle import OracleCase, affine_guess, prime_optimizer
from luser_cli.models.registry import count_parameters
from luser_cli.tasks import get_task
from luser_cli.training.config import Preset
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    clip_gradients,
    forward_backward,
)

__all__ = ["CudaOracle"]


def _free_cuda() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


class CudaOracle(OracleCase):
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
        self._set_case(task, model_name, image_size, allowance, preset)
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        self._answers: dict[tuple[int, int], bool] = {}

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
        model = build_training_model(preset, self.model_name, step_scale=1.0 / maker.norm_sq())
        model = model.to(self.device)
        model.train()
        optimizer = build_optimizer(model, preset.train)
        prime_optimizer(model, optimizer)
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
        return affine_guess(
            self._peaks, self.static_bytes, capacity_bytes - self.allowance.context_bytes
        )

    def summary(self) -> dict[str, Any]:
        return {
            "static_gb": None if self.static_bytes is None else self.static_bytes / GIB,
            "device_name": torch.cuda.get_device_name(self.device),
            "device_total_gb": self.total_bytes / GIB,
        }
