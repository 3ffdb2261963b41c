"""The trainer's checkpoints and recovery: its state in and out of checkpoints, rollback to the
last good state after a failed step, and the clean stop on SIGINT / SIGTERM.

:class:`CheckpointsAndRecovery` is the half of :class:`luser_cli.training.loop.Trainer` that
deals with saved state; the trainer's other half runs the steps. A rollback restores the last
saved state (kept in memory) with half the learning rate, at most ``train.max_rollbacks``
times; then the run stops with :class:`TrainingFailed`.
"""

from __future__ import annotations

import copy
import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from luser_cli.errors import CheckpointError, LuserError
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.distributed import DistContext
from luser_cli.training.faults import FaultPlan, sigkill
from luser_cli.training.metrics_file import MetricsLog
from luser_cli.training.sampler import BatchPlan


class TrainingFailed(LuserError):
    """Training diverged and the bounded rollbacks did not help (exit code 4)."""

    exit_code = 4


class TrainingInterrupted(LuserError):
    """SIGINT/SIGTERM: a checkpoint was saved; ``--resume`` continues (exit code 75,
    ``EX_TEMPFAIL``: "try again later")."""

    exit_code = 75


class CheckpointsAndRecovery:
    """Checkpoint state, rollback and interrupt handling of the trainer (see the module
    docstring); the attributes below are set by the trainer."""

    preset: Any
    model_name: str
    out: Path
    dist: DistContext
    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: BatchPlan
    metrics: MetricsLog
    faults: FaultPlan
    channels: int
    parameters: int
    step: int
    total_steps: int
    lr_scale: float
    rollbacks: int
    best_val: float
    nonconverged_total: int
    _saved_step: int
    _stop_signal: int | None
    _good_state: dict[str, Any] | None

    log: Callable[[str], None]
    _plot_curves: Callable[..., None]

    def _state(self) -> dict[str, Any]:
        return {
            "task": self.preset.task,
            "model": self.model_name,
            "image_size": self.preset.image_size,
            "channels": self.channels,
            "parameters": self.parameters,
            "preset": self.preset.model_dump(mode="json"),
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.plan.epoch_of(self.step),
            "total_steps": self.total_steps,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "best_val_psnr": self.best_val,
            "nonconverged_total": self.nonconverged_total,
            "metrics_rows": self.metrics.rows,
            "world_size": self.dist.world_size,
            "rng_torch": torch.get_rng_state(),
        }

    def _load_state(self, state: dict[str, Any], source: str) -> None:
        """Restore a checkpoint's training state; a state that does not fit is one line."""
        ckpt.check_state_shapes(
            self.model.state_dict(), state["model_state"], source, f"this {self.model_name} run"
        )
        ckpt.check_optimizer_shapes(self.model, state.get("optimizer_state"), source)
        try:
            self.model.load_state_dict(state["model_state"])
            self.optimizer.load_state_dict(state["optimizer_state"])
            if isinstance(state.get("rng_torch"), Tensor):
                torch.set_rng_state(state["rng_torch"])
            self.lr_scale = float(state.get("lr_scale", 1.0))
            self.rollbacks = int(state.get("rollbacks", 0))
            self.best_val = float(state.get("best_val_psnr", -math.inf))
            self.nonconverged_total = int(state.get("nonconverged_total", 0))
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise CheckpointError(
                f"{source}: its state does not fit this {self.model_name} run ({first})"
            ) from None
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise CheckpointError(f"{source}: bad learning-rate scale {self.lr_scale}")
        self.step = int(state["step"])

    def _remember_good(self) -> None:
        """Keep the state just saved in memory: the target of a rollback."""
        self._good_state = copy.deepcopy(
            {
                "model_state": self.model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "step": self.step,
                "rng_torch": torch.get_rng_state(),
                "nonconverged_total": self.nonconverged_total,
                "metrics_rows": self.metrics.rows,
            }
        )

    def save(self, best: bool = False) -> None:
        """Write ``checkpoint_best.pt`` (if ``best``) then ``checkpoint_last.pt`` (rank 0).

        Best goes first: a kill between the two leaves a ``last`` from before that validation,
        and the resumed run repeats it and writes ``best`` again.
        """
        if self.dist.is_main:
            state = self._state()
            if best:
                ckpt.save_checkpoint(self.out / ckpt.BEST, state)
            kill = self.faults.take("kill-save", self.step)
            kill_rotate = self.faults.take("kill-rotate", self.step)
            ckpt.save_checkpoint(
                self.out / ckpt.LAST,
                state,
                keep_previous=True,
                before_commit=sigkill if kill else None,
                after_rotate=sigkill if kill_rotate else None,
            )
        self._saved_step = self.step
        self._remember_good()

    def _rollback(self, step: int, reason: str) -> None:
        """Step ``step`` (0-based) failed: restore the last saved state with half the lr."""
        assert self._good_state is not None
        good = self._good_state
        self.rollbacks += 1
        limit = self.preset.train.max_rollbacks
        if self.rollbacks > limit:
            self.metrics.append(
                {"step": self.step, "event": "failed", "failed_step": step + 1, "reason": reason}
            )
            last = self.out / ckpt.LAST
            where = (
                f"the last good checkpoint is {last} (step {good['step']})"
                if last.exists()
                else "no checkpoint was saved"
            )
            raise TrainingFailed(
                f"training diverged at step {step + 1} ({reason}) after {limit} rollback(s) to "
                f"lower learning rates (now x{self.lr_scale:g}); {where}; try a lower --lr"
            )
        self.model.load_state_dict(good["model_state"])
        self.optimizer.load_state_dict(good["optimizer_state"])
        torch.set_rng_state(good["rng_torch"])
        self.step = int(good["step"])
        self.nonconverged_total = int(good["nonconverged_total"])
        self.metrics.truncate(int(good["metrics_rows"]), self.step)
        self.lr_scale *= 0.5
        self.log(
            f"warning: step {step + 1}: {reason}; rolled back to step {self.step} with learning "
            f"rate x{self.lr_scale:g} (rollback {self.rollbacks} of {limit})"
        )
        self.metrics.append(
            {
                "step": self.step,
                "event": "rollback",
                "failed_step": step + 1,
                "reason": reason,
                "lr_scale": self.lr_scale,
                "rollbacks": self.rollbacks,
            }
        )
        good["metrics_rows"] = self.metrics.rows  # a later rollback keeps this row

    def _note_signal(self, signum: int) -> None:
        self._stop_signal = signum

    def _stop_if_signalled(self) -> None:
        if not self.dist.any_flag(self._stop_signal is not None):
            return
        if self._saved_step != self.step:
            self.save()
        self._plot_curves(force=True)
        name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal"
        raise TrainingInterrupted(
            f"stopped by {name} at step {self.step}; checkpoint saved in {self.out} "
            "(continue with --resume)"
        )
