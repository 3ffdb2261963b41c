"""Turn a batch of ground-truth images into ``(x, y, op, x0)``, reproducibly.

Measurements are simulated on the fly with the task's operator and noise. The noise of each item
is seeded by ``(run seed, epoch, item index)``, and MRI masks by the item's own ``mask_seed``, so
a batch is the same whatever the batching, sharding or resume point.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from luser_cli.operators.base import LinearOperator
from luser_cli.physics import (
    build_operator,
    initial_estimate,
    mri_masks,
    seeded_generators,
)
from luser_cli.tasks import MRIPhysics, PhysicsSettings, get_task

if TYPE_CHECKING:
    from luser_cli.training.config import Preset


def training_noise_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the noise of one item in one epoch (``epoch=-1`` for eval splits).

    Not :func:`luser_cli.data.splits.item_seed` (which draws a built-in image) nor
    :func:`luser_cli.simulate.file_noise_seed` (``luser simulate``'s noise): each keeps its own
    formula because checkpoints, bench results and simulated files depend on the numbers."""
    return (seed * 1_000_003 + (epoch + 1) * 7_919 * 1_000_033 + index * 104_729) % (2**63 - 1)


def stack_items(dataset: Any, indices: Iterable[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """Items ``indices`` of ``dataset`` (``(image, meta)`` pairs) as a batch: images
    ``(B, C, H, W)`` and each metadata key as a ``(B,)`` tensor."""
    items = [dataset[i] for i in indices]
    x = torch.stack([it[0] for it in items])
    meta = {key: torch.as_tensor([it[1][key] for it in items]) for key in items[0][1]}
    return x, meta


@dataclass
class Batch:
    x: Tensor  # (B, C, H, W) ground truth
    y: Tensor  # (B, *measurement_shape)
    x0: Tensor  # (B, C, H, W) initial estimate
    op: LinearOperator


class BatchMaker:
    """Builds operators once (per mask for MRI) and simulates batches on ``device``."""

    def __init__(
        self,
        task: str,
        image_size: int,
        physics: PhysicsSettings,
        device: torch.device,
        initial: str = "auto",
    ) -> None:
        self.task = get_task(task)
        self.initial = initial
        self.image_size = image_size
        self.physics = physics
        self.device = device
        self._fixed_op: LinearOperator | None = None
        if not isinstance(physics, MRIPhysics):
            self._fixed_op = build_operator(self.task, image_size, physics).to(device)

    @classmethod
    def for_preset(cls, preset: Preset, device: torch.device) -> BatchMaker:
        """The batch maker of a resolved preset (its task, size, physics and initial estimate)."""
        return cls(
            preset.task, preset.image_size, preset.physics_settings(), device, preset.model.initial
        )

    def operator(self, mask_seeds: list[int] | None = None) -> LinearOperator:
        """The operator for a batch (per-item masks for MRI)."""
        if self._fixed_op is not None:
            return self._fixed_op
        seeds = mask_seeds if mask_seeds is not None else [0]
        masks = mri_masks(self.physics, self.image_size, seeds)  # type: ignore[arg-type]
        return build_operator(self.task, self.image_size, self.physics, masks=masks).to(self.device)

    def norm_sq(self) -> float:
        return self.operator().norm_sq()

    def make(self, x: Tensor, meta: dict, epoch: int, seed: int) -> Batch:
        """``x``: ``(B, C, H, W)`` (any device); ``meta["index"]``: ``(B,)`` item indices."""
        x = x.to(self.device, non_blocking=True)
        index = [int(i) for i in meta["index"]]
        mask_seeds = [int(s) for s in meta["mask_seed"]] if "mask_seed" in meta else index
        op = self.operator(mask_seeds)
        with torch.no_grad():
            seeds = [training_noise_seed(seed, epoch, i) for i in index]
            y = op.measure(x, seeded_generators(seeds))  # the operator's own noise
            x0 = initial_estimate(self.task, op, y, self.initial)
        return Batch(x=x, y=y, x0=x0, op=op)


def image_loss(x: Tensor, out: Tensor, kind: str = "mse") -> Tensor:
    """Loss of one output ``out`` against the truth ``x`` (both ``(B, C, H, W)``), a scalar.

    ``mse``: the mean squared error over the batch (the paper's). ``psnr``: the mean over images
    of ``10 log10(MSE_i)``, i.e. minus each image's PSNR for a unit data range, in dB. It weights
    every image's PSNR equally, as the reported mean PSNR does, where the MSE lets the worst
    images dominate; each image's gradient is its MSE gradient divided by its own MSE.
    """
    if kind == "psnr":
        per_image = torch.mean((out - x) ** 2, dim=tuple(range(1, x.dim())))
        return torch.mean(10.0 * torch.log10(per_image.clamp_min(1e-12)))
    return torch.mean((out - x) ** 2)


def reconstruction_loss(
    x: Tensor, output: Tensor | tuple[Tensor, list[Tensor]], aux_loss: bool, kind: str = "mse"
) -> Tensor:
    """``kind`` loss (:func:`image_loss`) of the final output, or its mean over every stage
    output ``x_1..x_K`` (aux)."""
    if isinstance(output, tuple):
        final, stages = output
        if aux_loss:
            return torch.stack([image_loss(x, s, kind) for s in stages]).mean()
        return image_loss(x, final, kind)
    return image_loss(x, output, kind)
