"""PSNR and SSIM with each field's convention (computed by scikit-image, not by hand).

- RGB deblurring (CelebA): images in [0, 1], ``data_range = 1``; SSIM over the colour channels.
- CT (LoDoPaB-CT): per image, ``data_range = gt.max() - gt.min()``.
- MRI (fastMRI): magnitude images; ``data_range = max of the target volume``; SSIM per slice with
  a 7x7 window. An image that is not part of a volume is its own volume.

All functions take NumPy float arrays ``(C, H, W)`` for one image (magnitudes ``(1, H, W)`` for
MRI) and return floats, except :func:`batch_psnr`, the training progress bar's quick mean over a
batch of tensors with the same convention (each image its own volume).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from luser_cli.physics import output_image
from luser_cli.tasks import get_task


def data_range(task: str, target: np.ndarray, volume_max: float | None = None) -> float:
    """The ``data_range`` the field uses for one target image."""
    rule = get_task(task).psnr_data_range
    if rule == "unit":
        return 1.0
    if rule == "volume_max":
        return float(volume_max if volume_max is not None else target.max())
    return float(target.max() - target.min())


def _in_float64(
    task: str, target: np.ndarray, pred: np.ndarray, volume_max: float | None
) -> tuple[float, np.ndarray, np.ndarray]:
    """``(data range, target, prediction)``, the images in float64."""
    return data_range(task, target, volume_max), target.astype(np.float64), pred.astype(np.float64)


def psnr(task: str, target: np.ndarray, pred: np.ndarray, volume_max: float | None = None) -> float:
    """PSNR in dB of one image under the task's convention (``inf`` for an exact match)."""
    rng, t, p = _in_float64(task, target, pred, volume_max)
    if rng <= 0:
        return math.nan
    if np.array_equal(t, p):
        return math.inf
    return float(peak_signal_noise_ratio(t, p, data_range=rng))


def ssim(task: str, target: np.ndarray, pred: np.ndarray, volume_max: float | None = None) -> float:
    """SSIM of one image under the task's convention (7x7 window, Gaussian off, as fastMRI)."""
    rng, t, p = _in_float64(task, target, pred, volume_max)
    if rng <= 0:
        return math.nan
    win = min(7, *t.shape[-2:])
    win -= 1 - win % 2  # odd
    if t.shape[0] == 1:
        return float(structural_similarity(t[0], p[0], data_range=rng, win_size=win))
    return float(structural_similarity(t, p, data_range=rng, win_size=win, channel_axis=0))


def mri_volume_max(dataset: object) -> float | None:
    """fastMRI items are divided by their volume's max, so that volume max is 1; other items are
    their own volume (``None``: the image max)."""
    from luser_cli.data.fastmri import FastMRIDataset

    return 1.0 if isinstance(dataset, FastMRIDataset) else None


def summarize(values: list[float]) -> dict[str, float]:
    """Mean and standard deviation of finite values (``n`` counts them)."""
    a = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def batch_psnr(task: str, target: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean PSNR (dB) of a batch ``(B, C, H, W)`` in the model's channels, with
    :func:`data_range`'s convention and each image its own volume (computed in torch: it runs
    every training step)."""
    t = output_image(task, target.detach()).flatten(1).double()
    p = output_image(task, pred.detach()).flatten(1).double()
    mse = torch.mean((t - p) ** 2, dim=1).clamp_min(1e-20)
    rule = get_task(task).psnr_data_range
    if rule == "unit":
        rng = torch.ones_like(mse)
    elif rule == "volume_max":
        rng = t.amax(1)
    else:
        rng = t.amax(1) - t.amin(1)
    return float(torch.mean(10 * torch.log10(rng.clamp_min(1e-12) ** 2 / mse)))
