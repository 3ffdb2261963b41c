"""The training-curve picture of a run folder (loss and validation PSNR against steps)."""

from __future__ import annotations

from pathlib import Path

from luser_cli.io.atomic import atomic_write
from luser_cli.training.metrics_file import read_rows, row_kind

#: y-axis label of the loss panel per ``train.loss``; the MSE is drawn on a log axis, the psnr
#: loss (a negative number of dB) on a linear one.
LOSS_LABELS = {"mse": "MSE loss", "psnr": "loss: mean 10 log10(MSE) (dB)"}


def plot_training_curves(metrics: Path, out: Path, title: str = "", loss: str = "mse") -> None:
    """Read ``metrics.jsonl`` and write a two-panel PNG (atomically); ``loss`` is the run's
    ``train.loss``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(metrics)
    train = [(r["step"], r["loss"], r.get("psnr")) for r in rows if row_kind(r) == "step"]
    val = [(r["step"], r["val_psnr"]) for r in rows if row_kind(r) == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    if train:
        s, values, psnr = zip(*train, strict=True)
        (ax1.semilogy if loss == "mse" else ax1.plot)(s, values, lw=1)
        ax2.plot(s, psnr, lw=0.8, alpha=0.6, label="train batch")
    if val:
        s, p = zip(*val, strict=True)
        ax2.plot(s, p, "o-", label="validation")
    ax1.set(xlabel="step", ylabel=LOSS_LABELS[loss], title="training loss")
    ax2.set(xlabel="step", ylabel="PSNR (dB)", title="PSNR")
    ax2.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
