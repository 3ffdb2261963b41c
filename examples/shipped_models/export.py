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
from luser_cli.training.metrics_file import read_rows, row_kind

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


_MRI_128 = (
    "--model luser-dw --image-size 128 --batch-size 4 --loss psnr --scheduler wsd --lr 1e-3 "
    "--fp-tol 0.01 --bwd-tol 0.01 --threads 1 --random-phase"
)
_SCANS = (
    "built-in, generated per step at 128 px: a third grey patches of scikit-image's training "
    "photographs, a third patches of real MR slices bundled with nibabel and pydicom (a brain "
    "EPI series and an abdominal slice, zoomed 0.5-2x), a third ellipse phantoms; half of all "
    "images with a smooth random phase"
)
#: Fine-tuning stages after the first run, per task: (run folder under RUNS_DIR, command). Each
#: starts from the best checkpoint of the stage before it (``--init``); the best checkpoint of
#: the last stage ships.
STAGES: dict[str, list[tuple[str, str]]] = {
    "ct": [],
    "mri4x": [
        (
            "mri4x-128",
            f"luser train --task mri4x {_MRI_128} --steps 120 --warmup-steps 10 --save-every 20 "
            "--val-every 40 --seed 3 --builtin mix-scans --init RUNS/mri4x --out RUNS/mri4x-128",
        ),
    ],
    "mri8x": [
        (
            "mri8x-128",
            f"luser train --task mri8x {_MRI_128} --steps 90 --warmup-steps 5 --save-every 15 "
            "--val-every 45 --seed 1 --builtin mix --init RUNS/mri8x --out RUNS/mri8x-128",
        ),
        (
            "mri8x-128b",
            f"luser train --task mri8x {_MRI_128} --steps 200 --warmup-steps 10 --save-every 20 "
            "--val-every 40 --seed 3 --builtin mix-scans --init RUNS/mri8x-128 "
            "--out RUNS/mri8x-128b",
        ),
    ],
    "deblur": [],
}
#: The last stage's data, where it differs from the first run's (``DATA``).
STAGE_DATA = {
    "mri4x": f"{_SCANS}; 4x masks (centre fraction 0.08); fine-tuned from a first run on: ",
    "mri8x": f"{_SCANS}; 8x masks (centre fraction 0.04); fine-tuned from runs on: ",
}
#: How the shipped checkpoint was chosen, per task.
CHOICE = {
    "ct": "best validation PSNR on the built-in validation images (scikit-image's rocket photo "
    "and ellipse phantoms)",
    "deblur": "best validation PSNR on the built-in validation photo patches (rocket)",
    "mri4x": "best validation PSNR of the last stage on its built-in validation images (rocket "
    "photo, nibabel's EPI series at its second time point, ellipse phantoms): step 40 of 120; "
    "that stage was then chosen over the first run on the check images of "
    "examples/shipped_models/evaluate_real.py --set check (never on the reserved images)",
    "mri8x": "best validation PSNR of the last stage on its built-in validation images (as "
    "mri4x): step 200 of 200; chosen over the earlier stages on the check images of "
    "examples/shipped_models/evaluate_real.py --set check (never on the reserved images)",
}
#: What a clean rerun of the command would do differently from the run that shipped.
NOTES = {
    "mri4x": "the last stage was stopped and resumed with other --steps values while it ran; "
    "the shipped step-40 checkpoint came before any decay, where every --steps value of 58 or "
    "more gives the same schedule",
    "mri8x": "the last stage was stopped and resumed with other --steps values while it ran: "
    "steps 140-157 ran at the full rate where a clean 200-step run decays",
}


def training_seconds(run: Path) -> float:
    """Sum of the per-step times in ``metrics.jsonl`` (training steps only)."""
    rows = read_rows(run / "metrics.jsonl")
    return sum(float(r["time_s"]) for r in rows if row_kind(r) == "step" and "time_s" in r)


def machine() -> str:
    info = machine_info()
    return f"{info['cpu']}, {info['cores']} cores shared by each round's runs (one thread each)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--metrics", type=Path, help="evaluate_real.py JSON (shipped models)")
    ap.add_argument("--out", type=Path, default=SHIPPED_DIR)
    args = ap.parse_args()
    metrics = json.loads(args.metrics.read_text()) if args.metrics else None
    for task in ("ct", "mri4x", "mri8x", "deblur"):
        command = f"luser train --task {task} {COMMON} {FLAGS[task]} --out RUNS/{task}"
        seconds = training_seconds(args.runs / task)
        run = args.runs / task
        for folder, stage in STAGES[task]:
            command += f" && {stage}"
            run = args.runs / folder
            seconds += training_seconds(run)
        card = {
            "name": f"luser-dw-{task}",
            "preset": f"presets/{task}.toml with the flags in 'command'",
            "data": STAGE_DATA.get(task, "") + DATA[task],
            "command": command,
            "checkpoint_choice": CHOICE[task],
            "training_seconds": round(seconds, 1),
            "machine": machine(),
            "torch": str(torch.__version__),
        }
        if task in NOTES:
            card["note"] = NOTES[task]
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
