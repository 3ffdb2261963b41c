"""How deep are a model's equilibria: per stage, the forward and backward iterations and the
spectral radius of the fixed-point map's Jacobian at the fixed point, on one batch.

Used by ``luser eval`` and ``luser info --checkpoint``. The probe runs the model once with
gradients (in eval mode, the weights untouched: the parameter gradients it produces are
discarded), so the backward solve of every equilibrium runs exactly as in training, and the
Jacobian estimate of :mod:`luser_cli.solvers.jacobian` is taken at each fixed point.
"""

from __future__ import annotations

from typing import Any

import torch

from luser_cli.models.unrolled import ReconstructionModel
from luser_cli.training.batches import Batch, reconstruction_loss

#: Power iterations of the Jacobian estimate (each one vector-Jacobian product per stage).
PROBE_ITERATIONS = 20


def probe_equilibria(
    model: ReconstructionModel,
    batch: Batch,
    iterations: int = PROBE_ITERATIONS,
    loss: str = "mse",
) -> dict[str, Any] | None:
    """Per-stage solver facts of ``model`` on ``batch`` (None for a model without equilibria).

    Returns ``{"stages": [...], "images": B, "probe_iterations": n}`` with one entry per
    equilibrium (LUSER: one per stage; DEQ4IP: one, the whole model): ``stage``,
    ``forward_iterations`` / ``backward_iterations`` (mean over the batch),
    ``forward_converged`` / ``backward_converged`` (fraction of images),
    ``forward_residual_max`` / ``backward_residual_max``, and ``jacobian_spectral_radius``
    (mean) and ``jacobian_spectral_radius_max`` over the batch. The backward entries are
    absent in Jacobian-free mode.
    """
    if not model.is_equilibrium():
        return None
    was_training = model.training
    saved_probe = model.jacobian_probe
    grads = {p: p.grad for p in model.parameters()}
    model.eval()
    model.jacobian_probe = iterations
    try:
        with torch.enable_grad():
            out = model(batch.y, batch.op, batch.x0)
            reconstruction_loss(batch.x, out, False, loss).backward()
        records = list(model.records)
    finally:
        model.jacobian_probe = saved_probe
        model.train(was_training)
        for p, g in grads.items():
            p.grad = g
    stages = []
    for rec in records:
        entry: dict[str, Any] = {"stage": int(rec.get("stage", len(stages)))}
        for side in ("forward", "backward"):
            if f"{side}_iterations" not in rec:
                continue
            entry[f"{side}_iterations"] = float(rec[f"{side}_iterations"].double().mean())
            entry[f"{side}_converged"] = float(rec[f"{side}_converged"].double().mean())
            entry[f"{side}_residual_max"] = float(rec[f"{side}_residual"].double().max())
        if "jacobian_spectral_radius" in rec:
            rho = rec["jacobian_spectral_radius"].double()
            entry["jacobian_spectral_radius"] = float(rho.mean())
            entry["jacobian_spectral_radius_max"] = float(rho.max())
        stages.append(entry)
    return {"stages": stages, "images": int(batch.x.shape[0]), "probe_iterations": iterations}


def format_equilibria(probe: dict[str, Any]) -> list[str]:
    """Plain-text lines (one header, one per stage) for the terminal."""
    lines = [
        f"equilibria on {probe['images']} image(s): stage, rho(J) at the fixed point "
        "(mean / max; power iteration), iterations forward / backward, converged fwd / bwd"
    ]
    for s in probe["stages"]:
        rho = s.get("jacobian_spectral_radius")
        rho_text = (
            f"{rho:.4f} / {s['jacobian_spectral_radius_max']:.4f}" if rho is not None else "-"
        )
        bwd = s.get("backward_iterations")
        its = f"{s['forward_iterations']:.1f} / " + (f"{bwd:.1f}" if bwd is not None else "-")
        conv = f"{s['forward_converged']:.0%} / " + (
            f"{s['backward_converged']:.0%}" if "backward_converged" in s else "-"
        )
        lines.append(f"  stage {s['stage']}: rho {rho_text}  iters {its}  converged {conv}")
    return lines


def probe_trained(trained: Any, images: int = 2, iterations: int = PROBE_ITERATIONS) -> dict | None:
    """:func:`probe_equilibria` of a loaded run (:class:`luser_cli.runs.TrainedModel`) on the
    first ``images`` built-in test images of its task and size (its preset's data settings)."""
    from luser_cli.data.sources import open_preset_data
    from luser_cli.evaluation.runner import SPLIT_EPOCH
    from luser_cli.training.batches import BatchMaker, stack_items

    preset = trained.preset
    if not trained.model.is_equilibrium():
        return None
    device = next(trained.model.parameters()).device
    dataset = open_preset_data(preset, "test", None, images)
    x, meta = stack_items(dataset, range(min(images, len(dataset))))
    batch = BatchMaker.for_preset(preset, device).make(
        x, meta, SPLIT_EPOCH["test"], preset.train.seed
    )
    return probe_equilibria(trained.model, batch, iterations, loss=preset.train.loss)
