"""The validation pass of ``luser train``: PSNR / SSIM on the validation split."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from luser_cli.evaluation.metrics import mri_volume_max, psnr, ssim
from luser_cli.physics import output_image
from luser_cli.training.batches import Batch, BatchMaker, stack_items
from luser_cli.training.distributed import DistContext

VAL_EPOCH = -1  # noise tag of the validation split (see evaluation.runner.SPLIT_EPOCH)


@torch.no_grad()
def validate(
    net: nn.Module,
    model: nn.Module,
    dataset: Any,
    maker: BatchMaker,
    *,
    task: str,
    batch_size: int,
    seed: int,
    dist: DistContext,
) -> dict[str, float]:
    """Mean ``val_psnr`` (dB) and ``val_ssim`` over the validation split, each field's
    convention, with fixed noise and masks; the ranks share the images and sum their results.
    ``net`` is the (possibly wrapped) model switched to eval mode, ``model`` the bare one."""
    net.eval()
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    psnrs: list[float] = []
    ssims: list[float] = []
    vmax = mri_volume_max(dataset)
    for start in range(0, len(indices), batch_size):
        x, meta = stack_items(dataset, indices[start : start + batch_size])
        b: Batch = maker.make(x, meta, VAL_EPOCH, seed)
        out = model(b.y, b.op, b.x0)
        t_img = output_image(task, b.x).cpu().numpy()
        p_img = output_image(task, out).float().cpu().numpy()
        for i in range(t_img.shape[0]):
            psnrs.append(psnr(task, t_img[i], p_img[i], vmax))
            ssims.append(ssim(task, t_img[i], p_img[i], vmax))
    sums = torch.tensor([sum(psnrs), sum(ssims), float(len(psnrs))], dtype=torch.float64)
    sums = dist.all_reduce_sum(sums)
    count = max(float(sums[2]), 1.0)
    return {"val_psnr": float(sums[0]) / count, "val_ssim": float(sums[1]) / count}
