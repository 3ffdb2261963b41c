"""The training loop behind ``luser train``.

One global step = one optimiser step on a global batch whose items, noise and MRI masks are a
pure function of ``(seed, step)`` (see :mod:`luser_cli.training.sampler` and
:mod:`luser_cli.training.batches`). Together with checkpoints that hold the model, optimiser,
step counter and learning-rate scale, this makes a resumed run, a distributed run and an
uninterrupted single-process run follow the same trajectory.

Failure handling: a non-finite loss or gradient, or an exploding fixed point, rolls the run back
to the last good state with half the learning rate, at most ``train.max_rollbacks`` times; then
the run stops with a one-line error. NaN weights are never saved. SIGINT/SIGTERM save a
checkpoint at the next step boundary and stop cleanly.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from luser_cli.data.sources import open_preset_data
from luser_cli.devices import resolve_device
from luser_cli.errors import CheckpointError, ConfigError, LuserError, OutputError
from luser_cli.evaluation.metrics import batch_psnr
from luser_cli.io.atomic import atomic_write
from luser_cli.models.registry import count_parameters
from luser_cli.models.unrolled import ReconstructionModel
from luser_cli.tasks import get_task
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.batches import BatchMaker, stack_items
from luser_cli.training.config import Preset, preset_to_toml
from luser_cli.training.convergence import (
    backward_convergence,
    convergence_warning,
    solver_summary,
)
from luser_cli.training.distributed import DistContext
from luser_cli.training.faults import FAULT_ENV, FaultPlan
from luser_cli.training.health import step_failure, weights_finite
from luser_cli.training.init_weights import load_init_weights
from luser_cli.training.metrics_file import MetricsLog
from luser_cli.training.recovery import CheckpointsAndRecovery
from luser_cli.training.run_folder import changed_settings, lock_run_folder, open_run
from luser_cli.training.run_lock import RunLock
from luser_cli.training.sampler import BatchPlan
from luser_cli.training.schedule import learning_rate
from luser_cli.training.signals import deferred_stop_signals
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    check_equilibrium_settings,
    clip_gradients,
    forward_backward,
)
from luser_cli.training.validation import validate

PLOT_EVERY_S = 60.0  # least seconds between redraws of training_curve.png during a run


@dataclass
class StepResult:
    loss: float
    psnr: float
    stats: dict[str, float] = field(default_factory=dict)


class Trainer(CheckpointsAndRecovery):
    """Train one model on one task with one preset into ``out_dir``."""

    def __init__(
        self,
        preset: Preset,
        model_name: str,
        out_dir: str | Path,
        *,
        device: str = "auto",
        resume: bool = False,
        dist: DistContext | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        init: str | None = None,
    ) -> None:
        preset = preset.for_model(model_name)  # a per-model learning rate (train.model_lr)
        self.preset = preset
        self.model_name = model_name
        self.out = Path(out_dir)
        self.dist = dist or DistContext.single()
        self.device = self.dist.device if self.dist.world_size > 1 else resolve_device(device)
        self.resume = resume
        self.show_progress = progress and self.dist.is_main
        self.log = log if self.dist.is_main else (lambda _m: None)
        self._stop_signal: int | None = None
        self._lock: RunLock | None = None
        self.faults = FaultPlan(os.environ.get(FAULT_ENV))

        t = preset.train
        self.seed = t.seed
        self.channels = get_task(preset.task).channels
        if t.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch size {t.batch_size} does not split over {self.dist.world_size} processes"
            )
        check_equilibrium_settings(preset, model_name)
        # The run folder is checked first: a wrong --resume fails before anything is built.
        self._resumable = self._open_run_everywhere()
        torch.manual_seed(self.seed)
        self.maker = BatchMaker.for_preset(preset, self.device)
        builtin = preset.data.path is None  # train_size caps only the built-in data
        train_size = preset.data.train_size if builtin else None
        self.train_set = open_preset_data(preset, "train", preset.data.path, train_size)
        self.val_set = open_preset_data(preset, "val", preset.data.path, preset.data.val_size)
        self.plan = BatchPlan(
            len(self.train_set), t.batch_size, self.seed, self.dist.rank, self.dist.world_size
        )
        self.total_steps = t.steps if t.steps is not None else t.epochs * self.plan.steps_per_epoch
        self.val_every = t.val_every or min(self.plan.steps_per_epoch, self.total_steps)
        self.save_every = t.save_every or min(self.plan.steps_per_epoch, self.total_steps)

        self.model: ReconstructionModel = build_training_model(
            preset, model_name, step_scale=1.0 / self.maker.norm_sq()
        ).to(self.device)
        self.init_label: str | None = None
        if init is not None and self._resumable is None:  # a resumed run keeps its own weights
            self.init_label = load_init_weights(
                self.model,
                init,
                task=preset.task,
                model_name=model_name,
                channels=self.channels,
                model_settings=preset.model.model_dump(mode="json"),
                log=log if self.dist.is_main else (lambda line: None),
            )
            if self.dist.is_main:
                log(f"initialised from {self.init_label}")
        self.parameters = count_parameters(self.model)
        self.net: nn.Module = self.dist.wrap(self.model)
        self.optimizer = build_optimizer(self.model, t)
        self.step = 0
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.best_val = -math.inf
        self.nonconverged_total = 0
        self.metrics = MetricsLog(self.out / "metrics.jsonl", writes=self.dist.is_main)
        self._saved_step = -1
        self._last_plot = time.monotonic()
        self._good_state: dict[str, Any] | None = None

    # -- state ---------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``: a function of the step and ``lr_scale``."""
        return learning_rate(self.preset.train, step, self.total_steps, self.lr_scale)

    # -- logging -------------------------------------------------------------------------------
    # -- one step ------------------------------------------------------------------------------
    def train_step(self, step: int) -> StepResult | str:
        """One optimiser step (``step`` 0-based). Returns the reduced metrics, or, when the step
        was not finite (nothing applied, or weights to be rolled back), the reason."""
        t = self.preset.train
        n = step + 1  # the step number of metrics.jsonl and of LUSER_FAULT_INJECT
        self.net.train()
        epoch = self.plan.epoch_of(step)
        x, meta = stack_items(self.train_set, self.plan.local_batch(step))
        batch = self.maker.make(x, meta, epoch, self.seed)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        batch.op.reset_counters()
        output, loss = forward_backward(self.net, self.optimizer, batch, t, self.device)
        loss_value = float(loss.detach())
        if self.faults.take("nan", n):
            loss_value = math.nan
        if self.faults.take("inf-grad", n):
            next(p for p in self.model.parameters() if p.grad is not None).grad.fill_(math.inf)
        calls = (batch.op.calls_A, batch.op.calls_A_adjoint)
        grad_norm = clip_gradients(self.model, t)
        stats = solver_summary(self.model.records, self.preset.solver.forward.tol)
        if self.faults.take("explode", n):
            stats["fp_forward_residual_max"] = 1e6
        values = torch.tensor(
            [loss_value, float(grad_norm), stats.get("fp_forward_residual_max", 0.0)],
            dtype=torch.float64,
        )
        values = self.dist.all_reduce_max(values)
        reason = step_failure(*(float(v) for v in values))
        if reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            return reason
        self.optimizer.step()
        if self.faults.take("nan-weights", n):
            with torch.no_grad():
                next(iter(self.model.parameters())).fill_(math.nan)
        if self.dist.any_flag(not weights_finite(self.model)):
            return "non-finite weights after the optimiser step"
        final = output[0] if isinstance(output, tuple) else output
        local = {
            "loss": loss_value,
            "psnr": batch_psnr(self.preset.task, batch.x, final),
            **stats,
            "A_calls": float(calls[0]),
            "At_calls": float(calls[1]),
            "grad_norm": float(grad_norm),
        }
        how = {k: "max" for k in local if k.endswith("_residual_max")}
        how["fp_nonconverged"] = "sum"
        reduced = self.dist.reduce_stats(local, how)
        loss_mean, psnr_mean = reduced.pop("loss"), reduced.pop("psnr")
        return StepResult(loss=loss_mean, psnr=psnr_mean, stats=reduced)

    def validate(self) -> dict[str, float]:
        """PSNR/SSIM on the validation split (:func:`luser_cli.training.validation.validate`)."""
        return validate(
            self.net,
            self.model,
            self.val_set,
            self.maker,
            task=self.preset.task,
            batch_size=self.preset.train.batch_size,
            seed=self.seed,
            dist=self.dist,
        )

    # -- the run -------------------------------------------------------------------------------
    def _changed_settings(self, stored: dict[str, Any]) -> list[str]:
        return changed_settings(self.preset.model_dump(mode="json"), stored, self.model_name)

    def _open_run(self) -> dict[str, Any] | None:
        """Rank 0's view of the run folder (:func:`luser_cli.training.run_folder.open_run`)."""
        expect = {
            "task": self.preset.task,
            "model": self.model_name,
            "image_size": self.preset.image_size,
            "channels": self.channels,
        }
        return open_run(
            self.out,
            resume=self.resume,
            preset=self.preset.model_dump(mode="json"),
            expect=expect,
            model_name=self.model_name,
            log=self.log,
        )

    def _open_run_everywhere(self) -> dict[str, Any] | None:
        """:meth:`_open_run` on rank 0, its outcome (checkpoint or one-line error) on every
        rank: the ranks need not share a file system, and never disagree."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.dist.is_main:
            try:
                outcome = ("ok", self._open_run())
            except LuserError as e:
                outcome = (type(e).__name__, str(e))
        outcome = self.dist.broadcast_from_main(outcome)
        if outcome[0] != "ok":  # the same one-line error on every rank
            kinds = {c.__name__: c for c in (ConfigError, CheckpointError, LuserError)}
            raise kinds.get(outcome[0], LuserError)(outcome[1])
        return outcome[1]

    def _lock_run_folder(self) -> None:
        """Rank 0 creates and locks the run folder
        (:func:`luser_cli.training.run_folder.lock_run_folder`); the outcome (or its one-line
        error) reaches every rank."""
        problem: tuple[str, str] | None = None
        if self.dist.is_main:
            try:
                before = self._resumable
                self._lock = lock_run_folder(
                    self.out, resume=self.resume, resumable_step=before["step"] if before else None
                )
            except LuserError as e:
                problem = (type(e).__name__, str(e))
        problem = self.dist.broadcast_from_main(problem)
        if problem is not None:
            self.close()
            kinds = {c.__name__: c for c in (ConfigError, CheckpointError, OutputError)}
            raise kinds.get(problem[0], LuserError)(problem[1])

    def _prepare_run_dir(self) -> None:
        """Restore the checkpoint found when the trainer was made, or start a new run folder."""
        self._lock_run_folder()
        resumable, self._resumable = self._resumable, None
        if resumable is not None:
            self._load_state(resumable, f"{self.out}")
            if self.dist.is_main:
                ckpt.remove_stale_temporaries(self.out)
            self.metrics.truncate(resumable.get("metrics_rows"), self.step)
            changed = self._changed_settings(resumable["preset"])
            if changed:
                self.log(
                    "warning: resuming with changed settings (the run will differ from an "
                    f"uninterrupted one): {'; '.join(changed)}"
                )
            self.log(f"resumed {self.out} at step {self.step}")
            self._saved_step = self.step
        elif self.dist.is_main:
            ckpt.remove_stale_temporaries(self.out)
            self.metrics.start_new()
        if self.dist.is_main:
            with atomic_write(self.out / "preset.toml") as tmp:
                tmp.write_text(preset_to_toml(self.preset), encoding="utf-8")
        self._remember_good()

    def _plot_curves(self, force: bool = False) -> None:
        """Redraw ``training_curve.png`` (rank 0) at the end, and meanwhile at most every
        :data:`PLOT_EVERY_S` seconds (drawing costs about a second)."""
        from luser_cli.training.curves import plot_training_curves

        now = time.monotonic()
        if not self.dist.is_main or not (force or now - self._last_plot >= PLOT_EVERY_S):
            return
        if self.metrics.path.exists():
            plot_training_curves(
                self.metrics.path,
                self.out / "training_curve.png",
                title=f"{self.model_name} on {self.preset.task}",
                loss=self.preset.train.loss,
            )
        self._last_plot = now

    def close(self) -> None:
        """Release the run folder's lock (also released when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def run(self) -> dict[str, Any]:
        """Train to the end (see the module docstring); the run folder's lock is released
        however it ends."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict[str, Any]:
        from luser_cli.training.progress import TrainingProgress

        with deferred_stop_signals(self._note_signal):
            self._prepare_run_dir()
            start_step = self.step
            t0 = time.perf_counter()
            progress = TrainingProgress(self.total_steps, start_step, enabled=self.show_progress)
            if start_step:  # resumed: count the earlier steps' backward solves too
                progress.backward = backward_convergence(self.metrics.read())
            last: StepResult | None = None
            with progress:
                while self.step < self.total_steps:
                    self._stop_if_signalled()
                    step = self.step
                    ts = time.perf_counter()
                    result = self.train_step(step)
                    if isinstance(result, str):
                        self._rollback(step, result)
                        continue
                    last = result
                    self.step = step + 1
                    self.nonconverged_total += int(result.stats.get("fp_nonconverged", 0))
                    row = {
                        "step": self.step,
                        "epoch": self.plan.epoch_of(step),
                        "loss": result.loss,
                        "psnr": result.psnr,
                        "lr": self.lr_at(step),
                        "time_s": time.perf_counter() - ts,
                        **result.stats,
                    }
                    self.metrics.append(row)
                    progress.update(
                        self.step, result.loss, result.psnr, result.stats, self.nonconverged_total
                    )
                    done = self.step == self.total_steps
                    best = False
                    if self.step % self.val_every == 0 or done:
                        val = self.validate()
                        best = val["val_psnr"] > self.best_val
                        if best:
                            self.best_val = val["val_psnr"]
                        self.metrics.append({"step": self.step, "split": "val", **val})
                        progress.note_validation(val)
                        self._plot_curves(force=done)
                    if self.step % self.save_every == 0 or done or best:
                        self.save(best=best)
        bwd = None
        if self.dist.is_main:
            bwd = backward_convergence(self.metrics.read())
        warning = convergence_warning(bwd)
        if warning:
            self.log(warning)
        summary = {
            "task": self.preset.task,
            "model": self.model_name,
            "parameters": self.parameters,
            "steps": self.step,
            "steps_this_session": self.step - start_step,
            "seconds": time.perf_counter() - t0,
            "best_val_psnr": self.best_val,
            "final_loss": last.loss if last else None,
            "rollbacks": self.rollbacks,
            "init": self.init_label,
            "fp_nonconverged": self.nonconverged_total,
            "fp_backward_converged_steps": bwd,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "out": str(self.out),
        }
        if self.dist.is_main:
            with atomic_write(self.out / "run.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary
