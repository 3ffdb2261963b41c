"""Comparison figure like the paper's Figure 2: input | classical | model | truth | error."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luser_cli.io.atomic import atomic_write


def _display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` -> something imshow takes: RGB ``(H, W, 3)`` clipped, or gray ``(H, W)``."""
    if img.shape[0] == 3:
        return np.clip(np.moveaxis(img, 0, -1), 0, 1), None
    return img[0], "gray"


def comparison_figure(
    rows: list[dict[str, np.ndarray]],
    out: Path,
    *,
    classical: str,
    model_name: str,
    scores: list[dict[str, float]] | None = None,
    title: str = "",
) -> None:
    """One row per image: input (initial estimate), best classical, model, truth, |model - truth|.

    ``rows``: dicts of ``(C, H, W)`` arrays with keys ``input``, ``truth``, ``model`` and the
    classical method's name; ``scores``: optional per-row ``{method: psnr}`` for the titles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["input", classical, "model", "truth", "error"]
    fig, axes = plt.subplots(len(rows), 5, figsize=(11, 2.3 * len(rows) + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        truth = row["truth"]
        vmax = float(truth.max()) if truth.shape[0] != 3 else 1.0
        for c, key in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if key == "error":
                err = np.abs(row["model"] - truth).mean(axis=0)
                im = ax.imshow(err, cmap="magma", vmin=0, vmax=max(float(err.max()), 1e-12))
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            else:
                img, cmap = _display(row[key])
                ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax if cmap else None)
            label = {"model": model_name, "error": f"|{model_name} - truth|"}.get(key, key)
            if scores and key in (classical, "model"):
                label += f"\n{scores[r][key]:.2f} dB"
            if r == 0 or (scores and key in (classical, "model")):
                ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
