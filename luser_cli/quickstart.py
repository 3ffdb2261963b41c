"""The README's main job: train LUSER-DW on built-in data, evaluate it, reconstruct a sample.

Every step is one of the ordinary commands (``luser train``, ``luser eval``, ``luser simulate``,
``luser reconstruct``) run through the library with the same code; the equivalent command lines
are printed so a user can rerun or vary any of them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from luser_cli.errors import ConfigError
from luser_cli.io.atomic import atomic_write

if TYPE_CHECKING:
    from luser_cli.training.config import Preset


@dataclass(frozen=True)
class QuickstartSettings:
    """The main job's settings; defaults are the README's measured run (see there)."""

    task: str = "ct"
    model: str = "luser-dw"
    image_size: int = 64
    steps: int = 500
    batch_size: int = 4
    lr: float | None = None  # the preset's (with its per-model rates) when None
    #: More than the preset's test_size: TV's per-image PSNR spreads widely on the phantoms, so a
    #: small mean of model - TV moves between seeds (measured in examples/quality-bars.md).
    eval_images: int = 128
    seed: int = 0
    initial: str | None = None  # None: the task preset's (ct.toml: fbp; the others: auto)
    data_step: str | None = None  # None: the task preset's (ct.toml: fbp; the others: gradient)
    loss: str = "psnr"
    #: Forward and backward fixed-point tolerance (the preset's 1e-3 when None): the equilibria
    #: deepen as LUSER-DW trains, and 1e-2 keeps the late steps cheap (examples/quality-bars.md).
    tol: float | None = 1e-2

    def __post_init__(self) -> None:
        # Resolved once from the preset, so the command line, the run's preset and
        # quickstart.json all say the same.
        from luser_cli.training.config import preset_for_task

        model = preset_for_task(self.task).model
        if self.initial is None:
            object.__setattr__(self, "initial", model.initial)
        if self.data_step is None:
            object.__setattr__(self, "data_step", model.data_step)

    def flag_values(self) -> dict[str, Any]:
        """The ``luser train`` flags this job sets (:data:`luser_cli.cli.flags.FLAGS` names), in
        the order the command line prints them; None: the preset's."""
        return {
            "image_size": self.image_size,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "initial": self.initial,
            "data_step": self.data_step,
            "loss": self.loss,
            "seed": self.seed,
            "fp_tol": self.tol,
            "bwd_tol": self.tol,
            "lr": self.lr,  # as `luser train --lr`: it also replaces the per-model rates
        }

    def preset(self) -> Preset:
        """The task's preset with this job's flags: what the training runs with."""
        from luser_cli.cli.flags import apply_flags
        from luser_cli.training.config import preset_for_task

        return apply_flags(preset_for_task(self.task), self.flag_values())

    def train_args(self, run: Path) -> list[str]:
        """The equivalent ``luser train`` command (:mod:`luser_cli.training.command`)."""
        from luser_cli.training.command import train_args

        return train_args(self.task, self.flag_values(), model=self.model, out=run)


def _sample_png(task: str, image_size: int, seed: int, path: Path) -> None:
    """A held-out built-in test image written as a PNG (what a user would bring)."""
    from luser_cli.data.sources import open_dataset
    from luser_cli.io.images import write_png
    from luser_cli.physics import output_image

    image, _ = open_dataset(task, "test", image_size, None, seed, size=1)[0]
    shown = output_image(task, image[None])[0].numpy()  # (C, H, W) in [0, 1]
    pixels = np.clip(np.rint(shown * 255), 0, 255).astype(np.uint8)
    write_png(path, pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1))


def run_quickstart(
    out: Path, settings: QuickstartSettings, progress: bool = True, log=print
) -> dict[str, Any]:
    """Run the whole job into ``out``; returns (and writes ``quickstart.json``) the summary."""
    from luser_cli.evaluation.figures import comparison_figure
    from luser_cli.evaluation.runner import Examples, evaluate
    from luser_cli.reconstruct import reconstruct_file
    from luser_cli.runs import load_trained
    from luser_cli.simulate import simulate_file
    from luser_cli.training.loop import Trainer

    s = settings
    preset = s.preset()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; choose a folder")
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    t0 = time.perf_counter()
    log("1/3  " + " ".join(s.train_args(run)))
    summary_train = Trainer(preset, s.model, run, progress=progress, log=log).run()
    t_train = time.perf_counter() - t0

    log(f"2/3  luser eval {run} --n {s.eval_images} --json {out / 'eval.json'}")
    trained = load_trained(run, "cpu")
    examples = Examples()
    result = evaluate(trained, data=None, split="test", n_images=s.eval_images, examples=examples)
    best = result["best_classical"]
    comparison_figure(
        examples.rows,
        out / "comparison.png",
        classical=best,
        model_name=s.model,
        scores=examples.psnr,
        title=f"{s.model} vs {best} on held-out built-in {s.task} images",
    )
    with atomic_write(out / "eval.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    t_eval = time.perf_counter() - t0 - t_train

    sample = out / "sample.png"
    scan = out / "sample_scan.h5"
    recon = out / "sample_recon.png"
    log(
        f"3/3  luser simulate {sample} -t {s.task} -o {scan} && "
        f"luser reconstruct {scan} -o {recon} --checkpoint {run}"
    )
    _sample_png(s.task, s.image_size, s.seed, sample)
    simulate_file(sample, scan, task=s.task, seed=s.seed)
    rec = reconstruct_file(scan, recon, "model", options={"checkpoint": run}, progress=False)
    t_total = time.perf_counter() - t0

    metrics = result["metrics"]
    summary = {
        "settings": asdict(s),
        "train": summary_train,
        "eval": {
            "n_images": result["n_images"],
            "model_psnr": metrics["model"]["psnr"],
            "model_ssim": metrics["model"]["ssim"],
            "best_classical": best,
            "best_classical_psnr": metrics[best]["psnr"],
            "model_minus_best_classical_db": result["model_minus_best_classical_db"],
            "all": metrics,
        },
        "sample": {"input": str(sample), "scan": str(scan), "reconstruction": str(rec.output)},
        "seconds": {"train": t_train, "eval": t_eval, "total": t_total},
        "threads": torch.get_num_threads(),
        "out": str(out),
    }
    with atomic_write(out / "quickstart.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
