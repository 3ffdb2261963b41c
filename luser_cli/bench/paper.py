"""The paper's own numbers (Guan et al., LUSER), for side-by-side tables.

Table 2: test PSNR (dB) / SSIM per task, model and loss ("final": MSE of the final output;
"aux": MSE on every intermediate x_k as well). DEQ4IP has no auxiliary-loss column (it has no
stages). Table 4: the paper's qualitative comparison of LU(-DnCNN), DEQ4IP and LUSER. The data
sets, image sizes and GPU are the paper's: CelebA (RGB; size not stated), LoDoPaB-CT 362 x 362,
fastMRI single-coil knee 320 x 320, one 24 GB RTX 6000.

Table 3 (parameters and largest batch per GPU) lives in :mod:`luser_cli.memprobe.paper`.
"""

from __future__ import annotations

from luser_cli.memprobe.paper import paper_max_batch, paper_parameters

__all__ = [
    "LOSSES",
    "PAPER_DATA",
    "PAPER_IMAGE_SIZE",
    "PAPER_TABLE2",
    "PAPER_TABLE4",
    "TABLE4_MODEL",
    "paper_batch_24gb",
    "paper_parameters",
    "paper_score",
]

LOSSES: tuple[str, ...] = ("final", "aux")

#: task -> model -> loss -> (PSNR dB, SSIM), paper Table 2.
PAPER_TABLE2: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "deblur": {
        "lu-dncnn": {"final": (29.93, 0.862), "aux": (30.39, 0.871)},
        "deq4ip": {"final": (31.57, 0.895)},
        "luser-sw": {"final": (30.30, 0.869), "aux": (30.65, 0.878)},
        "luser-dw": {"final": (31.40, 0.891), "aux": (31.15, 0.888)},
    },
    "ct": {
        "lu-dncnn": {"final": (30.59, 0.844), "aux": (31.59, 0.859)},
        "deq4ip": {"final": (31.79, 0.868)},
        "luser-sw": {"final": (28.82, 0.801), "aux": (28.04, 0.797)},
        "luser-dw": {"final": (31.83, 0.860), "aux": (31.66, 0.859)},
    },
    "mri4x": {
        "lu-dncnn": {"final": (29.01, 0.668), "aux": (29.02, 0.671)},
        "deq4ip": {"final": (29.01, 0.678)},
        "luser-sw": {"final": (28.82, 0.662), "aux": (29.18, 0.685)},
        "luser-dw": {"final": (29.86, 0.740), "aux": (29.37, 0.713)},
    },
    "mri8x": {
        "lu-dncnn": {"final": (27.50, 0.576), "aux": (27.65, 0.572)},
        "deq4ip": {"final": (27.51, 0.570)},
        "luser-sw": {"final": (27.42, 0.562), "aux": (27.42, 0.560)},
        "luser-dw": {"final": (28.06, 0.630), "aux": (27.55, 0.596)},
    },
}

#: The paper's data set per task.
PAPER_DATA: dict[str, str] = {
    "deblur": "CelebA (RGB faces)",
    "ct": "LoDoPaB-CT",
    "mri4x": "fastMRI single-coil knee",
    "mri8x": "fastMRI single-coil knee",
}

#: The paper's image side per task (None: not stated; our deblur preset uses 128).
PAPER_IMAGE_SIZE: dict[str, int | None] = {"deblur": None, "ct": 362, "mri4x": 320, "mri8x": 320}

#: Paper Table 4: property -> {"lu", "deq4ip", "luser"} -> the paper's word.
PAPER_TABLE4: dict[str, dict[str, str]] = {
    "Training time": {"lu": "Fast", "deq4ip": "Slow", "luser": "Moderate"},
    "Evaluation time": {"lu": "Fast", "deq4ip": "Slow", "luser": "Moderate"},
    "Training stability": {"lu": "Stable", "deq4ip": "Unstable", "luser": "Stable"},
    "Network size": {"lu": "Large", "deq4ip": "Large", "luser": "Small"},
    "Expressiveness": {"lu": "Low", "deq4ip": "Moderate", "luser": "High"},
    "Training memory usage": {"lu": "Large", "deq4ip": "Small", "luser": "Moderate"},
}

#: Our model -> its Table 4 column.
TABLE4_MODEL: dict[str, str] = {
    "lu-dncnn": "lu",
    "deq4ip": "deq4ip",
    "luser-sw": "luser",
    "luser-dw": "luser",
}


def paper_score(task: str, model: str, loss: str) -> tuple[float, float] | None:
    """The paper's (PSNR, SSIM) for one cell, or None where Table 2 has no entry."""
    return PAPER_TABLE2.get(task, {}).get(model, {}).get(loss)


def paper_batch_24gb(task: str, model: str) -> int | None:
    """The paper's largest training batch on 24 GB (Table 3; 0 = batch 1 does not fit)."""
    return paper_max_batch(task, model, 24)
