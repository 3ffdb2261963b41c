"""Build any of the four models by name for a task; count their parameters."""

from __future__ import annotations

from torch import nn

from luser_cli.errors import ConfigError
from luser_cli.models.deq4ip import DEQ4IP
from luser_cli.models.dncnn import DnCNN
from luser_cli.models.shallow_block import ShallowEquilibriumBlock
from luser_cli.models.unrolled import DataStep, LoopUnrolled, ReconstructionModel
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.tasks import get_task

MODEL_NAMES: tuple[str, ...] = ("lu-dncnn", "deq4ip", "luser-sw", "luser-dw")

DESCRIPTIONS: dict[str, str] = {
    "lu-dncnn": "loop unrolled, K stages, shared 17-layer DnCNN prox, backprop through all stages",
    "deq4ip": "one equilibrium over the whole proximal-gradient step (SN DnCNN), implicit diff.",
    "luser-sw": "loop unrolled, K stages, one shared shallow equilibrium block, implicit diff.",
    "luser-dw": "loop unrolled, K stages, a shallow equilibrium block per stage, implicit diff.",
}


def is_equilibrium_model(name: str) -> bool:
    """Whether model ``name`` has equilibrium (fixed-point) layers: all but LU-DnCNN."""
    return check_model_name(name) != "lu-dncnn"


def check_model_name(name: str) -> str:
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return name


def build_model(
    name: str,
    task: str,
    *,
    step_scale: float,
    stages: int = 8,
    equilibrium: EquilibriumConfig | None = None,
    data_step: DataStep = "gradient",
    ray_weight_power: float = 0.0,
    mu_max: float | None = None,
    deq4ip_norm: str = "batch",
    deq4ip_anchor: float = 0.0,
) -> ReconstructionModel:
    """A freshly initialised model.

    ``step_scale`` is ``1 / ||A||^2`` of the task operator at the training image size;
    ``equilibrium`` holds the fixed-point solver settings of the DEQ models (defaults if None);
    ``data_step`` the stages' data-consistency step and ``ray_weight_power`` its per-ray weights
    (``mu_max``: the CT data's attenuation scale), see :mod:`luser_cli.models.unrolled`;
    ``deq4ip_norm`` / ``deq4ip_anchor``: DEQ4IP's contraction settings (:mod:`.deq4ip`).
    """
    check_model_name(name)
    channels = get_task(task).channels
    eq = equilibrium if equilibrium is not None else EquilibriumConfig()
    if name == "lu-dncnn":
        return LoopUnrolled(
            name, [DnCNN(channels)], stages, step_scale, None, data_step, ray_weight_power, mu_max
        )
    if name == "deq4ip":
        return DEQ4IP(
            channels,
            step_scale,
            eq,
            data_step,
            ray_weight_power,
            mu_max,
            norm=deq4ip_norm,
            anchor=deq4ip_anchor,
        )
    blocks = 1 if name == "luser-sw" else stages
    prox: list[nn.Module] = [ShallowEquilibriumBlock(channels) for _ in range(blocks)]
    return LoopUnrolled(name, prox, stages, step_scale, eq, data_step, ray_weight_power, mu_max)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the step size included; spectral-norm vectors are buffers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
