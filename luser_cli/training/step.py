"""The pieces of one training step, shared by ``luser train`` and ``luser memprobe``.

``memprobe`` measures memory by running exactly these functions (same model construction, same
forward/loss/backward, same optimiser), so what it reports is what training uses.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from luser_cli.errors import ConfigError
from luser_cli.models.data_steps import data_step_from_physics
from luser_cli.models.registry import SHALLOW_BLOCK_MODELS, build_model, is_equilibrium_model
from luser_cli.models.shallow_block import INIT_GAIN
from luser_cli.models.unrolled import ReconstructionModel
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.training.batches import Batch, reconstruction_loss
from luser_cli.training.config import Preset, TrainSettings


def build_training_model(
    preset: Preset,
    model_name: str,
    *,
    step_scale: float,
    equilibrium: EquilibriumConfig | None = None,
) -> ReconstructionModel:
    """The model ``luser train`` trains for ``preset`` (``step_scale = 1 / ||A||^2``); with
    ``train.jacobian_penalty`` its equilibria return the penalty term in training."""
    model = build_model(
        model_name,
        preset.task,
        step_scale=step_scale,
        stages=preset.model.stages,
        equilibrium=equilibrium if equilibrium is not None else preset.solver,
        data_consistency=data_step_from_physics(
            preset.model.data_step, preset.physics_settings(), preset.model.ray_weight_power
        ),
        deq4ip_norm=preset.model.deq4ip_norm or "batch",
        deq4ip_anchor=preset.model.deq4ip_anchor or 0.0,
        init_gain=preset.model.init_gain,
        warm_start=preset.model.warm_start,
    )
    model.jacobian_penalty = preset.train.jacobian_penalty > 0
    return model


def check_equilibrium_settings(preset: Preset, model_name: str) -> None:
    """A one-line error for equilibrium settings given to a model that has no use for them."""
    if preset.train.jacobian_penalty > 0 and not is_equilibrium_model(model_name):
        raise ConfigError(
            f"--jacobian-penalty needs an equilibrium model (deq4ip, luser-sw, luser-dw), "
            f"not {model_name}"
        )
    if preset.model.init_gain != INIT_GAIN and model_name not in SHALLOW_BLOCK_MODELS:
        raise ConfigError(f"--init-gain is a LUSER setting; {model_name} has no shallow block")
    if preset.model.warm_start and model_name not in SHALLOW_BLOCK_MODELS:
        raise ConfigError(f"--warm-start is a LUSER setting; {model_name} has no stage equilibria")


def build_optimizer(model: nn.Module, t: TrainSettings) -> torch.optim.Optimizer:
    opt_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def autocast_for(t: TrainSettings, device: torch.device) -> AbstractContextManager:
    """bfloat16 autocast for the networks (the physics always runs in float32).

    On CPUs it pays only with AMX tiles (about 4x faster convolutions measured on a Sapphire
    Rapids core); with AVX512-BF16 alone a LUSER-DW step was 4.5x slower than float32
    (``examples/cpu-throughput/alternatives.md``). The fixed-point residual then bottoms out
    near 5e-3, so pair it with a forward tolerance of 1e-2.
    """
    if t.bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def forward_backward(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    t: TrainSettings,
    device: torch.device,
) -> tuple[Tensor | tuple[Tensor, list[Tensor]], Tensor]:
    """Zero the gradients, run the model and the loss, backpropagate. Returns (output, loss):
    ``loss`` is the reconstruction loss; with ``t.jacobian_penalty`` the backpropagated
    objective also holds that weight times :func:`jacobian_penalty_of` the model's records
    (the model built by :func:`build_training_model` from the same preset returns them)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(t, device):
        output = net(batch.y, batch.op, batch.x0, return_intermediates=t.aux_loss)
        loss = reconstruction_loss(batch.x, output, t.aux_loss, t.loss)
    objective = loss
    if t.jacobian_penalty > 0:
        model = getattr(net, "module", net)  # DistributedDataParallel wraps the model
        penalty = jacobian_penalty_of(model.records)
        if penalty is not None:
            objective = loss + t.jacobian_penalty * penalty
    objective.backward()
    return output, loss


def jacobian_penalty_of(records: list[dict]) -> Tensor | None:
    """The mean over equilibria and samples of their ``jacobian_frobenius`` (a differentiable
    scalar), or None when no record holds one (a model without equilibria)."""
    terms = [r["jacobian_frobenius"].mean() for r in records if "jacobian_frobenius" in r]
    return torch.stack(terms).mean() if terms else None


def clip_gradients(model: nn.Module, t: TrainSettings) -> Tensor:
    """Clip to ``t.grad_clip`` (if set); returns the total gradient norm before clipping."""
    limit = t.grad_clip if t.grad_clip else float("inf")
    return torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
