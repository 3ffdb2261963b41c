"""Export trained runs as the models shipped in ``luser_cli/shipped/`` with their model cards.

    python examples/shipped_models/export.py RUNS_DIR [--metrics real-images.json]

``RUNS_DIR`` holds one run folder per task (``ct``, ``mri4x``, ``mri8x``, ``deblur``) made by
``train_all.sh``; each run's best checkpoint (by validation PSNR on built-in validation images)
is exported. ``--metrics`` adds the real-image results of ``evaluate_real.py`` to the cards
(the weights, and so their sha256, do not change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from luser_cli.bench.machine import machine_info
from luser_cli.shipped import SHIPPED_DIR
from luser_cli.shipped.export import export_shipped
from luser_cli.training.convergence import read_metrics

DATA = {
    "ct": "built-in, generated per step: half grey patches of scikit-image's training "
    "photographs (astronaut, immunohistochemistry, motorcycle pair, retina, Hubble deep field) "
    "scaled to a peak attenuation of 0.25-0.7 (LoDoPaB units), half dival-style ellipse "
    "phantoms (peak 0.35); LoDoPaB physics (200 of 1000 angles, N0 = 4096)",
    "mri4x": "built-in, generated per step: half grey patches of scikit-image's training "
    "photographs, half ellipse phantoms; half of all images with a smooth random phase; "
    "fastMRI-style random column masks, 4x, centre fraction 0.08, no added noise",
    "mri8x": "as mri4x, with 8x masks (centre fraction 0.04)",
    "deblur": "built-in, generated per step: RGB patches of scikit-image's training "
    "photographs; 9x9 Gaussian blur (variance 5), noise std 0.01",
}
FLAGS = {
    "ct": "--builtin mix",
    "mri4x": "--lr 2e-3 --builtin mix --random-phase",
    "mri8x": "--lr 2e-3 --builtin mix --random-phase",
    "deblur": "--lr 2e-3",
}
COMMON = (
    "--model luser-dw --image-size 64 --steps 560 --batch-size 4 --loss psnr --scheduler wsd "
    "--fp-tol 0.01 --bwd-tol 0.01 --save-every 50 --val-every 200 --threads 1 --seed 0"
)


#: Run folder (under RUNS_DIR) whose best checkpoint ships, per task.
RUN = {"ct": "ct", "mri4x": "mri4x", "mri8x": "mri8x-128", "deblur": "deblur"}
#: A second, fine-tuning stage (``--init`` from the first run).
SECOND_STAGE = {
    "mri8x": "luser train --task mri8x --model luser-dw --image-size 128 --steps 90 "
    "--batch-size 4 --loss psnr --scheduler wsd --lr 1e-3 --warmup-steps 5 --fp-tol 0.01 "
    "--bwd-tol 0.01 --save-every 15 --val-every 45 --threads 1 --seed 1 --builtin mix "
    "--random-phase --init RUNS/mri8x --out RUNS/mri8x-128",
}


def training_seconds(run: Path) -> float:
    """Sum of the per-step times in ``metrics.jsonl`` (training steps only)."""
    rows = read_metrics(run / "metrics.jsonl")
    return sum(float(r["time_s"]) for r in rows if "loss" in r and "time_s" in r)


def machine() -> str:
    info = machine_info()
    return f"{info['cpu']}, {info['cores']} cores shared by the four runs (one thread each)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--metrics", type=Path, help="evaluate_real.py JSON (shipped models)")
    ap.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = ap.parse_args()
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    for task in ("ct", "mri4x", "mri8x", "deblur"):
        run = args.runs / RUN[task]
        command = f"luser train --task {task} {COMMON} {FLAGS[task]} --out RUNS/{task}"
        if task in SECOND_STAGE:
            command += f" && {SECOND_STAGE[task]}"
        seconds = training_seconds(args.runs / task)
        if run != args.runs / task:
            seconds += training_seconds(run)
        card = {
            "name": f"luser-dw-{task}",
            "preset": f"presets/{task}.toml with the flags in 'command'",
            "data": DATA[task],
            "command": command,
            "checkpoint_choice": "best validation PSNR on the built-in validation images "
            "(scikit-image's rocket photo and ellipse phantoms)",
            "training_seconds": round(seconds, 1),
            "machine": machine(),
            "torch": str(torch.__version__),
        }
        if metrics is not None and task in metrics.get("summary", {}):
            # Only the means: the images are named in examples/shipped_models/real-images.*,
            # never inside the package, which must not refer to evaluation-only data.
            card["real_images"] = {
                "set": "held-out real images, used for this evaluation only (never for "
                "training, tuning or checkpoint choice): examples/shipped_models/real-images.md",
                "summary_128px": metrics["summary"][task],
                "larger_files": [
                    {k: r[k] for k in ("size", "model", "tv") if k in r}
                    for r in metrics["rows"][task]
                    if r["size"] != 128
                ],
            }
        path = export_shipped(run, args.out, card)
        print(f"{task}: {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
