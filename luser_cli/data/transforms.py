"""Small pure functions that bring an image into a task's layout (fastMRI-style transforms).

Arrays here are NumPy ``float32`` ``(C, H, W)`` images in their own units; no per-image rescaling.
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from luser_cli.errors import InputError
from luser_cli.tasks import get_task

# ITU-R BT.601 luma, as skimage.color.rgb2gray uses (0.2125, 0.7154, 0.0721 is BT.709):
_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)


def to_task_channels(image: np.ndarray, task: str) -> np.ndarray:
    """``(C, H, W)`` -> the task's channels: RGB (deblur), gray (CT), real+imag (MRI, imag = 0).

    Gray images are replicated to RGB for deblurring; RGB images become luminance for CT and MRI;
    an alpha channel is dropped.
    """
    if image.ndim != 3:
        raise InputError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
    if image.shape[0] in (2, 4):  # gray+alpha, RGBA
        image = image[: image.shape[0] - 1]
    c = image.shape[0]
    if c not in (1, 3):
        raise InputError(f"images need 1 or 3 channels, got {c}")
    spec = get_task(task)
    if spec.modality == "rgb":
        return np.repeat(image, 3, axis=0) if c == 1 else image
    gray = image if c == 1 else np.tensordot(_LUMA, image, axes=1)[None]
    if spec.complex_valued:
        return np.concatenate([gray, np.zeros_like(gray)], axis=0).astype(np.float32)
    return gray.astype(np.float32)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop the last two axes to ``(height, width)`` (fastMRI's ``center_crop``)."""
    h, w = image.shape[-2:]
    if height > h or width > w:
        raise InputError(f"cannot crop {h}x{w} to {height}x{width}")
    top, left = (h - height) // 2, (w - width) // 2
    return image[..., top : top + height, left : left + width]


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """Centre crop the last two axes to the largest square."""
    s = min(image.shape[-2:])
    return center_crop(image, s, s)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop ``(C, H, W)`` to a square and resize to ``size x size`` (anti-aliased)."""
    sq = center_crop_square(image)
    if sq.shape[-1] == size:
        return np.ascontiguousarray(sq, dtype=np.float32)
    out = resize(sq, (sq.shape[0], size, size), order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)
