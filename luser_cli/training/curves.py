"""The training-curve picture of a run folder (loss and validation PSNR against steps)."""

from __future__ import annotations

import json
from pathlib import Path

from luser_cli.io.atomic import atomic_write


def plot_training_curves(
    metrics: Path, out: Path, title: str = "", loss_label: str = "MSE loss"
) -> None:
    """Read ``metrics.jsonl`` and write a two-panel PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("split") == "val":
            val.append((row["step"], row["val_psnr"]))
        elif "loss" in row:
            train.append((row["step"], row["loss"], row.get("psnr")))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    if train:
        s, loss, psnr = zip(*train, strict=True)
        if min(loss) > 0:  # MSE; the psnr loss (minus a PSNR in dB) is negative
            ax1.semilogy(s, loss, lw=1)
        else:
            ax1.plot(s, loss, lw=1)
        ax2.plot(s, psnr, lw=0.8, alpha=0.6, label="train batch")
    if val:
        s, p = zip(*val, strict=True)
        ax2.plot(s, p, "o-", label="validation")
    ax1.set(xlabel="step", ylabel=loss_label, title="training loss")
    ax2.set(xlabel="step", ylabel="PSNR (dB)", title="PSNR")
    ax2.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
