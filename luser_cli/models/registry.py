"""Build any of the four models by name for a task; count their parameters."""

from __future__ import annotations

from torch import nn

from luser_cli.errors import ConfigError
from luser_cli.models.data_steps import DataConsistency, GradientStep
from luser_cli.models.deq4ip import DEQ4IP
from luser_cli.models.dncnn import DnCNN
from luser_cli.models.shallow_block import INIT_GAIN, ShallowEquilibriumBlock
from luser_cli.models.unrolled import LoopUnrolled, ReconstructionModel
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.tasks import get_task

MODEL_NAMES: tuple[str, ...] = ("lu-dncnn", "deq4ip", "luser-sw", "luser-dw")
#: The models whose prox is LUSER's shallow equilibrium block.
SHALLOW_BLOCK_MODELS: tuple[str, ...] = ("luser-sw", "luser-dw")

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
    data_consistency: DataConsistency | None = None,
    deq4ip_norm: str = "batch",
    deq4ip_anchor: float = 0.0,
    init_gain: float = INIT_GAIN,
    warm_start: bool = False,
) -> ReconstructionModel:
    """A freshly initialised model.

    ``step_scale`` is ``1 / ||A||^2`` of the task operator at the training image size;
    ``equilibrium`` holds the fixed-point solver settings of the DEQ models (defaults if None;
    each shallow block owns them); ``data_consistency`` the stages' data-consistency step, a
    module of :mod:`luser_cli.models.data_steps` built from the physics
    (:func:`~luser_cli.models.data_steps.data_step_from_physics`; the paper's gradient step if
    None); ``deq4ip_norm`` / ``deq4ip_anchor``: DEQ4IP's contraction settings (:mod:`.deq4ip`);
    ``init_gain``: LUSER's starting gain of each block's last GroupNorm
    (:class:`~luser_cli.models.shallow_block.ShallowEquilibriumBlock`); ``warm_start``: LUSER
    starts each stage's solve from the previous stage's fixed point
    (:class:`~luser_cli.models.unrolled.LoopUnrolled`).
    """
    check_model_name(name)
    channels = get_task(task).channels
    eq = equilibrium if equilibrium is not None else EquilibriumConfig()
    data = data_consistency if data_consistency is not None else GradientStep()
    if name == "lu-dncnn":
        return LoopUnrolled(
            name=name,
            prox=[DnCNN(channels)],
            stages=stages,
            step_scale=step_scale,
            data_consistency=data,
        )
    if name == "deq4ip":
        return DEQ4IP(
            channels=channels,
            step_scale=step_scale,
            equilibrium=eq,
            data_consistency=data,
            norm=deq4ip_norm,
            anchor=deq4ip_anchor,
        )
    blocks = 1 if name == "luser-sw" else stages
    prox = [
        ShallowEquilibriumBlock(channels, equilibrium=eq, init_gain=init_gain)
        for _ in range(blocks)
    ]
    return LoopUnrolled(
        name=name,
        prox=prox,
        stages=stages,
        step_scale=step_scale,
        data_consistency=data,
        warm_start=warm_start,
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the step size included; spectral-norm vectors are buffers)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
