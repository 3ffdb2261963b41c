"""A plain-data description of a model: parameter counts, layers, solver settings."""

from __future__ import annotations

from typing import Any

from torch import nn

from luser_cli.models.registry import DESCRIPTIONS, count_parameters
from luser_cli.models.unrolled import LoopUnrolled, ReconstructionModel

DATA_STEP_TEXT: dict[str, str] = {
    "gradient": "gradient: x + step A^T(y - Ax) / ||A||^2",
    "fbp": "fbp: x + step FBP(y - Ax), Hann filter (one sinogram FFT per A^T)",
}


def ray_weights_text(power: float) -> str:
    """``luser info``'s line for the data step's ray weights."""
    if not power:
        return "none: every ray alike"
    return f"p = {power:g}: residual x exp(-mu_max y)^{power:g} (relative photon count), mean 1"


def _layers(module: nn.Module) -> list[str]:
    """One line per leaf layer, e.g. ``Conv2d(1->32, 3x3, SN)``."""
    from torch.nn.utils import parametrize

    out = []
    for m in module.modules():
        if list(m.children()) and not parametrize.is_parametrized(m):
            continue
        if isinstance(m, nn.Conv2d):
            sn = ", SN" if parametrize.is_parametrized(m) else ""
            bias = "" if m.bias is not None else ", no bias"
            k = "x".join(map(str, m.kernel_size))
            out.append(f"Conv2d({m.in_channels}->{m.out_channels}, {k}{bias}{sn})")
        elif isinstance(m, nn.GroupNorm):
            out.append(f"GroupNorm({m.num_groups} groups, {m.num_channels})")
        elif isinstance(m, nn.BatchNorm2d):
            out.append(f"BatchNorm2d({m.num_features})")
        elif isinstance(m, nn.LeakyReLU):
            out.append(f"LeakyReLU({m.negative_slope})")
        elif isinstance(m, nn.ReLU):
            out.append("ReLU")
    return out


def describe_model(model: ReconstructionModel, task: str, solver: dict | None) -> dict[str, Any]:
    """JSON-ready description used by ``luser info``."""
    info: dict[str, Any] = {
        "task": task,
        "model": model.name,
        "description": DESCRIPTIONS[model.name],
        "parameters": count_parameters(model),
        "step_size_parameters": 1,
        "data_step": DATA_STEP_TEXT[model.data_step],
        "ray_weights": ray_weights_text(model.ray_weight_power),
    }
    if isinstance(model, LoopUnrolled):
        info["stages"] = model.stages
        info["shared_weights"] = model.shared_weights()
        info["prox_networks"] = len(model.prox)
        info["prox_parameters_each"] = count_parameters(model.prox[0])
        block = model.prox[0]
        if hasattr(block, "inject"):
            info["architecture"] = {
                "inject (once per stage)": _layers(block.inject),
                "data (every iteration)": _layers(block.data),
                "mix (every iteration)": _layers(block.mix),
            }
        else:
            info["architecture"] = {"prox (DnCNN)": _layers(block)}
        info["operator_applications"] = {
            "A": model.stages,
            "A_adjoint": model.stages,
            "note": "per reconstruction; +1 A_adjoint for the initial estimate of CT and MRI",
        }
    else:
        info["stages"] = "until the fixed point"
        info["shared_weights"] = True
        norm, anchor = getattr(model, "norm", "batch"), getattr(model, "anchor", 0.0)
        info["batchnorm_in_fixed_point"] = (
            "fixed per-channel affine (contractive)"
            if norm == "fixed"
            else "batch statistics (the original; expansive, solves do not converge)"
        )
        info["data_step_anchor"] = (
            f"mu = {anchor:g}: d = x + step (B(y - Ax) - mu (x - x0)), step in [0, 2/(1+mu)]"
            if anchor
            else "none"
        )
        info["architecture"] = {"prox (SN DnCNN inside the fixed-point map)": _layers(model.prox)}
        info["operator_applications"] = {
            "A": "1 per forward iteration (+1 per backward iteration in training)",
            "A_adjoint": "1 per forward iteration (+1 per backward iteration in training)",
        }
    info["solver"] = solver if model.is_equilibrium() else None
    return info
