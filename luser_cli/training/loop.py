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

import copy
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from luser_cli.data.sources import open_dataset
from luser_cli.errors import ConfigError, LuserError
from luser_cli.evaluation.metrics import mri_volume_max
from luser_cli.evaluation.metrics import psnr as field_psnr
from luser_cli.evaluation.metrics import ssim as field_ssim
from luser_cli.models.registry import count_parameters
from luser_cli.models.unrolled import ReconstructionModel
from luser_cli.physics import output_image
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.batches import Batch, BatchMaker
from luser_cli.training.config import Preset, preset_to_toml
from luser_cli.training.distributed import DistContext
from luser_cli.training.sampler import BatchPlan
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    clip_gradients,
    forward_backward,
)

EXPLODED_RESIDUAL = 1e3  # a forward residual above this marks the fixed point as exploded
VAL_EPOCH = -1  # noise tag of the validation split (see evaluation.runner.SPLIT_EPOCH)


class TrainingFailed(LuserError):
    exit_code = 4


class TrainingInterrupted(LuserError):
    exit_code = 130


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def solver_summary(records: list[dict], tol: float | None = None) -> dict[str, float]:
    """Mean forward/backward iterations and the worst residuals over stages and samples."""
    out: dict[str, float] = {}
    for key in ("forward", "backward"):
        its = [r[f"{key}_iterations"].float() for r in records if f"{key}_iterations" in r]
        res = [r[f"{key}_residual"].float() for r in records if f"{key}_residual" in r]
        if its:
            out[f"fp_{key}_iters"] = float(torch.stack([i.mean() for i in its]).mean())
            out[f"fp_{key}_iters_total"] = float(sum(float(i.mean()) for i in its))
        if res:
            worst = float(torch.stack([r.max() for r in res]).max())
            if any(bool(r[f"{key}_nonfinite"].any()) for r in records if f"{key}_nonfinite" in r):
                worst = math.inf  # a sample's iterates stopped being finite: exploded
            out[f"fp_{key}_residual_max"] = worst
    if tol is not None:
        res = [r["forward_residual"] for r in records if "forward_residual" in r]
        if res:
            out["fp_nonconverged"] = float(sum(int((r > tol).sum()) for r in res))
    return out


@dataclass
class StepResult:
    loss: float
    psnr: float
    stats: dict[str, float] = field(default_factory=dict)


def _batch_psnr(task: str, x: Tensor, out: Tensor) -> float:
    """Quick mean PSNR of a training batch for the progress bar (per-image range)."""
    t = output_image(task, x.detach()).flatten(1)
    p = output_image(task, out.detach()).flatten(1)
    mse = torch.mean((t - p) ** 2, dim=1).clamp_min(1e-20)
    rng = (t.amax(1) - (t.amin(1) if t.shape[1] else 0)).clamp_min(1e-12)
    if x.shape[1] == 3:
        rng = torch.ones_like(rng)
    return float(torch.mean(10 * torch.log10(rng**2 / mse)))


class Trainer:
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
    ) -> None:
        self.preset = preset
        self.model_name = model_name
        self.out = Path(out_dir)
        self.dist = dist or DistContext.single()
        self.device = self.dist.device if self.dist.world_size > 1 else resolve_device(device)
        self.resume = resume
        self.show_progress = progress and self.dist.is_main
        self.log = log if self.dist.is_main else (lambda _m: None)
        self._stop_signal: int | None = None

        t = preset.train
        self.seed = t.seed
        torch.manual_seed(self.seed)
        self.maker = BatchMaker(preset.task, preset.image_size, preset.physics_model(), self.device)
        builtin = preset.data.path is None  # train_size caps only the built-in data
        self.train_set = open_dataset(
            preset.task,
            "train",
            preset.image_size,
            preset.data.path,
            self.seed,
            size=preset.data.train_size if builtin else None,
        )
        self.val_set = open_dataset(
            preset.task,
            "val",
            preset.image_size,
            preset.data.path,
            self.seed,
            size=preset.data.val_size,
        )
        if t.batch_size % self.dist.world_size:
            raise ConfigError(
                f"batch size {t.batch_size} does not split over {self.dist.world_size} processes"
            )
        self.plan = BatchPlan(
            len(self.train_set), t.batch_size, self.seed, self.dist.rank, self.dist.world_size
        )
        self.total_steps = t.steps if t.steps is not None else t.epochs * self.plan.steps_per_epoch
        self.val_every = t.val_every or min(self.plan.steps_per_epoch, self.total_steps)
        self.save_every = t.save_every or min(self.plan.steps_per_epoch, self.total_steps)

        self.model: ReconstructionModel = build_training_model(
            preset, model_name, step_scale=1.0 / self.maker.norm_sq()
        ).to(self.device)
        self.parameters = count_parameters(self.model)
        self.net: nn.Module = self.dist.wrap(self.model)
        self.optimizer = build_optimizer(self.model, t)
        self.step = 0
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.best_val = -math.inf
        self.nonconverged_total = 0
        self._good_state: dict[str, Any] | None = None

    # -- state ---------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        t = self.preset.train
        base = t.lr * self.lr_scale
        if t.scheduler == "cosine" and self.total_steps > 1:
            return (
                base
                * 0.5
                * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
            )
        return base

    def _state(self) -> dict[str, Any]:
        return {
            "task": self.preset.task,
            "model": self.model_name,
            "image_size": self.preset.image_size,
            "channels": self.maker.task.channels,
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
            "rng_torch": torch.get_rng_state(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.step = int(state["step"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.best_val = float(state.get("best_val_psnr", -math.inf))
        if isinstance(state.get("rng_torch"), Tensor):
            torch.set_rng_state(state["rng_torch"])

    def _remember_good(self) -> None:
        self._good_state = copy.deepcopy(
            {
                "model_state": self.model.state_dict(),
                "optimizer_state": self.optimizer.state_dict(),
                "step": self.step,
            }
        )

    def save(self, best: bool = False) -> None:
        if not self.dist.is_main:
            return
        state = self._state()
        ckpt.save_checkpoint(self.out / ckpt.LAST, state, keep_previous=True)
        if best:
            ckpt.save_checkpoint(self.out / ckpt.BEST, state)

    # -- logging -------------------------------------------------------------------------------
    def _metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _write_metrics(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self._metrics_path(), "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint's step (they will be redone)."""
        p = self._metrics_path()
        if not (self.dist.is_main and p.exists()):
            return
        keep = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a kill
        p.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    # -- one step ------------------------------------------------------------------------------
    def _items(self, indices: list[int], dataset) -> tuple[Tensor, dict]:
        items = [dataset[i] for i in indices]
        x = torch.stack([it[0] for it in items])
        meta = {key: torch.as_tensor([it[1][key] for it in items]) for key in items[0][1]}
        return x, meta

    def train_step(self, step: int) -> StepResult | None:
        """One optimiser step; returns None if the step was not finite (nothing applied)."""
        t = self.preset.train
        self.net.train()
        epoch = self.plan.epoch_of(step)
        x, meta = self._items(self.plan.local_batch(step), self.train_set)
        batch = self.maker.make(x, meta, epoch, self.seed)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        batch.op.reset_counters()
        output, loss = forward_backward(self.net, self.optimizer, batch, t, self.device)
        calls = (batch.op.calls_A, batch.op.calls_A_adjoint)
        grad_norm = clip_gradients(self.model, t)
        stats = solver_summary(self.model.records, self.preset.solver.forward.tol)
        values = torch.tensor(
            [float(loss.detach()), float(grad_norm), stats.get("fp_forward_residual_max", 0.0)],
            dtype=torch.float64,
        )
        values = self.dist.all_reduce_max(values)
        if not bool(torch.isfinite(values).all()) or values[2] > EXPLODED_RESIDUAL:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        final = output[0] if isinstance(output, tuple) else output
        stats["A_calls"], stats["At_calls"] = float(calls[0]), float(calls[1])
        stats["grad_norm"] = float(grad_norm)
        loss_mean = float(self.dist.all_reduce_mean(torch.tensor([float(loss.detach())]))[0])
        return StepResult(
            loss=loss_mean, psnr=_batch_psnr(self.preset.task, batch.x, final), stats=stats
        )

    # -- validation ----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """PSNR/SSIM on the validation split (each field's convention), fixed noise."""
        self.net.eval()
        n = len(self.val_set)
        indices = list(range(self.dist.rank, n, self.dist.world_size))
        psnrs: list[float] = []
        ssims: list[float] = []
        task = self.preset.task
        bs = self.preset.train.batch_size
        vmax = mri_volume_max(self.val_set)
        for start in range(0, len(indices), bs):
            x, meta = self._items(indices[start : start + bs], self.val_set)
            b: Batch = self.maker.make(x, meta, VAL_EPOCH, self.seed)
            out = self.model(b.y, b.op, b.x0)
            t_img = output_image(task, b.x).cpu().numpy()
            p_img = output_image(task, out).float().cpu().numpy()
            for i in range(t_img.shape[0]):
                psnrs.append(field_psnr(task, t_img[i], p_img[i], vmax))
                ssims.append(field_ssim(task, t_img[i], p_img[i], vmax))
        sums = torch.tensor([sum(psnrs), sum(ssims), float(len(psnrs))], dtype=torch.float64)
        sums = self.dist.all_reduce_sum(sums)
        count = max(float(sums[2]), 1.0)
        return {"val_psnr": float(sums[0]) / count, "val_ssim": float(sums[1]) / count}

    # -- the run -------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        resumable = ckpt.load_resumable(self.out, warn=self.log) if self.resume else None
        if self.resume and resumable is None:
            self.log(f"no checkpoint in {self.out} to resume from; starting a new run")
        if resumable is not None:
            ckpt.check_compatible(
                resumable,
                task=self.preset.task,
                image_size=self.preset.image_size,
                source=str(self.out),
            )
            if resumable["model"] != self.model_name:
                raise ConfigError(
                    f"{self.out} holds a {resumable['model']} run, not {self.model_name}"
                )
            self._load_state(resumable)
            self._truncate_metrics(self.step)
            self.log(f"resumed {self.out} at step {self.step}")
        elif self.dist.is_main:
            if (self.out / ckpt.LAST).exists() and not self.resume:
                raise ConfigError(
                    f"{self.out} already holds a run; pass --resume to continue it or choose "
                    "another --out"
                )
            self._metrics_path().unlink(missing_ok=True)
        if self.dist.is_main:
            (self.out / "preset.toml").write_text(preset_to_toml(self.preset), encoding="utf-8")
        self._remember_good()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum, _frame):
            self._stop_signal = signum

        old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            with suppress(ValueError):  # not the main thread: no handlers
                old[s] = signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _rollback(self, step: int) -> None:
        self.rollbacks += 1
        if self.rollbacks > self.preset.train.max_rollbacks:
            raise TrainingFailed(
                f"training diverged at step {step} (non-finite loss or exploding fixed point) "
                f"after {self.rollbacks - 1} rollbacks with lower learning rates; last good "
                f"checkpoint: {self.out / ckpt.LAST}"
            )
        assert self._good_state is not None
        self.model.load_state_dict(self._good_state["model_state"])
        self.optimizer.load_state_dict(self._good_state["optimizer_state"])
        self.step = int(self._good_state["step"])
        self.lr_scale *= 0.5
        self.log(
            f"warning: step {step} was not finite; rolled back to step {self.step} with "
            f"learning rate x{self.lr_scale:g} ({self.rollbacks}/{self.preset.train.max_rollbacks})"
        )
        self._write_metrics({"step": step, "event": "rollback", "lr_scale": self.lr_scale})

    def run(self) -> dict[str, Any]:
        from luser_cli.training.curves import plot_training_curves
        from luser_cli.training.progress import TrainingProgress

        self._prepare_run_dir()
        start_step = self.step
        t0 = time.perf_counter()
        progress = TrainingProgress(self.total_steps, start_step, enabled=self.show_progress)
        last: StepResult | None = None
        with self._signals(), progress:
            while self.step < self.total_steps:
                step = self.step
                ts = time.perf_counter()
                result = self.train_step(step)
                if result is None:
                    self._rollback(step)
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
                self._write_metrics(row)
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
                    self._write_metrics({"step": self.step, "split": "val", **val})
                    progress.note_validation(val)
                    if self.dist.is_main:
                        plot_training_curves(
                            self._metrics_path(),
                            self.out / "training_curve.png",
                            title=f"{self.model_name} on {self.preset.task}",
                        )
                if self.step % self.save_every == 0 or done or best:
                    self.save(best=best)
                    self._remember_good()
                if self.dist.any_flag(self._stop_signal is not None):
                    self.save()
                    name = signal.Signals(self._stop_signal).name if self._stop_signal else "signal"
                    raise TrainingInterrupted(
                        f"stopped by {name} at step {self.step}; checkpoint saved in {self.out} "
                        "(continue with --resume)"
                    )
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
            "fp_nonconverged": self.nonconverged_total,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "out": str(self.out),
        }
        if self.dist.is_main:
            (self.out / "run.json").write_text(
                json.dumps(summary, indent=2) + "\n", encoding="utf-8"
            )
        return summary
