"""``luser eval``: a trained model against the classical baselines, on the same images.

For every image the measurement is simulated with fixed per-item seeds (so every method sees the
same ``y``), each method reconstructs it, and PSNR / SSIM are computed with the field's
convention (:mod:`luser_cli.evaluation.metrics`). The model's reconstruction time, fixed-point
iterations and ``A`` / ``A^T`` applications are recorded per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from luser_cli.classical.methods import default_method, methods_for, reconstruct_classical
from luser_cli.data.sources import open_preset_data
from luser_cli.evaluation.metrics import mri_volume_max, psnr, ssim, summarize
from luser_cli.physics import output_image
from luser_cli.runs import TrainedModel
from luser_cli.training.batches import BatchMaker, stack_items
from luser_cli.training.convergence import run_backward_convergence

#: ``epoch`` tag of the fixed noise of each evaluation split (training epochs are >= 0).
SPLIT_EPOCH = {"val": -1, "test": -2, "train": -3, "all": -4}


@dataclass
class MethodScores:
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        p, s, t = summarize(self.psnr), summarize(self.ssim), summarize(self.seconds)
        return {
            "psnr": p["mean"],
            "psnr_std": p["std"],
            "ssim": s["mean"],
            "ssim_std": s["std"],
            "seconds_per_image": t["mean"],
        }


@dataclass
class Examples:
    """The first few images of every method, for the comparison figure."""

    limit: int = 3
    rows: list[dict[str, np.ndarray]] = field(default_factory=list)
    psnr: list[dict[str, float]] = field(default_factory=list)


def evaluate(
    trained: TrainedModel,
    *,
    data: str | None,
    split: str = "test",
    image_size: int | None = None,
    n_images: int | None = None,
    batch_size: int = 4,
    device: torch.device = torch.device("cpu"),
    methods: list[str] | None = None,
    examples: Examples | None = None,
    progress: Callable[[int, int], None] | None = None,
    equilibria: bool = False,
) -> dict[str, Any]:
    """Evaluate ``trained`` and the classical ``methods`` (all of the task's by default).

    With ``equilibria``, an equilibrium model is also probed on (at most 2 images of) the first
    batch: per stage, forward/backward iterations and the Jacobian's spectral radius at the
    fixed point (:func:`luser_cli.evaluation.equilibria.probe_equilibria`), under
    ``"equilibria"``. ``"training_backward_convergence"`` is the run's share of training steps
    whose backward solves converged (from its ``metrics.jsonl``; None when not recorded).
    """
    preset = trained.preset
    if image_size is not None and image_size != preset.image_size:
        # Evaluate at another size: the data and the operator at that size, the same networks.
        preset = preset.model_copy(update={"image_size": int(image_size)})
    task = preset.task
    size = n_images if data is None else None
    if data is None and size is None:
        size = preset.data.test_size if split == "test" else preset.data.val_size
    dataset = open_preset_data(preset, split, data, size)
    count = len(dataset) if n_images is None else min(n_images, len(dataset))
    maker = BatchMaker.for_preset(preset, device)
    vmax = mri_volume_max(dataset)
    chosen = list(methods) if methods is not None else list(methods_for(task))
    scores = {name: MethodScores() for name in ["model", *chosen]}
    fp_iters: list[float] = []
    calls: list[float] = []
    model = trained.model.to(device).eval()
    epoch = SPLIT_EPOCH.get(split, -2)
    done = 0
    probe: dict[str, Any] | None = None
    for start in range(0, count, batch_size):
        x, meta = stack_items(dataset, range(start, min(start + batch_size, count)))
        batch = maker.make(x, meta, epoch, preset.train.seed)
        b = x.shape[0]
        if equilibria and probe is None and model.is_equilibrium():
            from luser_cli.evaluation.equilibria import probe_equilibria

            k = min(b, 2)
            small = maker.make(
                x[:k], {key: v[:k] for key, v in meta.items()}, epoch, preset.train.seed
            )
            probe = probe_equilibria(model, small, loss=preset.train.loss)
        recon: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            batch.op.reset_counters()
            t0 = time.perf_counter()
            recon["model"] = model(batch.y, batch.op, batch.x0)
            dt = (time.perf_counter() - t0) / b
            scores["model"].seconds.extend([dt] * b)
            calls.append((batch.op.calls_A + batch.op.calls_A_adjoint) / 2)
            if model.records:
                per_sample = torch.stack([r["forward_iterations"].float() for r in model.records])
                fp_iters.extend(per_sample.sum(0).tolist())
            for name in chosen:
                t0 = time.perf_counter()
                recon[name] = reconstruct_classical(name, task, batch.op, batch.y)
                scores[name].seconds.extend([(time.perf_counter() - t0) / b] * b)
        target = output_image(task, batch.x).cpu().numpy()
        outs = {k: output_image(task, v).float().cpu().numpy() for k, v in recon.items()}
        for i in range(b):
            row_psnr = {}
            for name, out in outs.items():
                row_psnr[name] = psnr(task, target[i], out[i], vmax)
                scores[name].psnr.append(row_psnr[name])
                scores[name].ssim.append(ssim(task, target[i], out[i], vmax))
            if examples is not None and len(examples.rows) < examples.limit:
                x0 = output_image(task, batch.x0[i : i + 1]).cpu().numpy()[0]
                examples.rows.append(
                    {"input": x0, "truth": target[i], **{k: v[i] for k, v in outs.items()}}
                )
                examples.psnr.append(row_psnr)
        done += b
        if progress is not None:
            progress(done, count)
    metrics = {name: s.summary() for name, s in scores.items()}
    if fp_iters:
        metrics["model"]["fp_forward_iterations_per_image"] = float(np.mean(fp_iters))
    metrics["model"]["operator_applications_per_image"] = float(np.mean(calls)) if calls else 0.0
    best = max(chosen, key=lambda m: metrics[m]["psnr"]) if chosen else None
    return {
        "task": task,
        "model": trained.name,
        "split": split,
        "data": data or "built-in",
        "n_images": done,
        "checkpoint": str(trained.path),
        "trained_steps": trained.checkpoint["step"],
        "image_size": preset.image_size,
        "trained_image_size": trained.checkpoint["image_size"],
        "metrics": metrics,
        "best_classical": best,
        "default_classical": default_method(task),
        "model_minus_best_classical_db": (
            metrics["model"]["psnr"] - metrics[best]["psnr"] if best else None
        ),
        "training_backward_convergence": run_backward_convergence(trained.path),
        "equilibria": probe,
    }
