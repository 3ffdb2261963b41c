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
import os
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
from luser_cli.errors import CheckpointError, ConfigError, LuserError, OutputError
from luser_cli.evaluation.metrics import mri_volume_max
from luser_cli.evaluation.metrics import psnr as field_psnr
from luser_cli.evaluation.metrics import ssim as field_ssim
from luser_cli.io.atomic import atomic_write, disk_full_error, disk_full_reason
from luser_cli.models.registry import count_parameters
from luser_cli.models.unrolled import ReconstructionModel
from luser_cli.physics import output_image
from luser_cli.tasks import get_task
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.batches import Batch, BatchMaker
from luser_cli.training.config import Preset, preset_to_toml
from luser_cli.training.convergence import (
    backward_convergence,
    convergence_warning,
    read_metrics,
    solver_summary,
)
from luser_cli.training.distributed import DistContext
from luser_cli.training.faults import FAULT_ENV, FaultPlan, sigkill
from luser_cli.training.init_weights import load_init_weights
from luser_cli.training.run_lock import RunLock, check_run_folder
from luser_cli.training.sampler import BatchPlan
from luser_cli.training.schedule import learning_rate
from luser_cli.training.step import (
    build_optimizer,
    build_training_model,
    clip_gradients,
    forward_backward,
)

EXPLODED_RESIDUAL = 1e3  # a forward residual above this marks the fixed point as exploded
PLOT_EVERY_S = 60.0  # least seconds between redraws of training_curve.png during a run
VAL_EPOCH = -1  # noise tag of the validation split (see evaluation.runner.SPLIT_EPOCH)
LENGTH = ("train.steps ", "train.epochs ")  # settings --resume may change (the run's length)


class TrainingFailed(LuserError):
    """Training diverged and the bounded rollbacks did not help (exit code 4)."""

    exit_code = 4


class TrainingInterrupted(LuserError):
    """SIGINT/SIGTERM: a checkpoint was saved; ``--resume`` continues (exit code 75,
    ``EX_TEMPFAIL``: "try again later")."""

    exit_code = 75


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


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
        # The run folder is checked first: a wrong --resume fails before anything is built.
        self._resumable = self._open_run_everywhere()
        torch.manual_seed(self.seed)
        self.maker = BatchMaker.for_preset(preset, self.device)
        builtin = preset.data.path is None  # train_size caps only the built-in data
        self.train_set = open_dataset(
            preset.task,
            "train",
            preset.image_size,
            preset.data.path,
            self.seed,
            size=preset.data.train_size if builtin else None,
            builtin=preset.data.builtin,
            random_phase=preset.data.random_phase,
        )
        self.val_set = open_dataset(
            preset.task,
            "val",
            preset.image_size,
            preset.data.path,
            self.seed,
            size=preset.data.val_size,
            builtin=preset.data.builtin,
            random_phase=preset.data.random_phase,
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
        self.metrics_rows = 0  # rows of metrics.jsonl written so far (kept in checkpoints)
        self._saved_step = -1
        self._last_plot = time.monotonic()
        self._good_state: dict[str, Any] | None = None

    # -- state ---------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``: a function of the step and ``lr_scale``."""
        return learning_rate(self.preset.train, step, self.total_steps, self.lr_scale)

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
            "metrics_rows": self.metrics_rows,
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
                "metrics_rows": self.metrics_rows,
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

    # -- logging -------------------------------------------------------------------------------
    def _metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _write_metrics(self, row: dict[str, Any]) -> None:
        self.metrics_rows += 1
        if self.dist.is_main:
            try:
                with open(self._metrics_path(), "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:  # a full disk: one line; a torn row is dropped on resume
                if disk_full_reason(e) is None:
                    raise
                raise disk_full_error(self._metrics_path(), e) from None

    def _truncate_metrics(self, rows: int | None, step: int) -> None:
        """Keep the first ``rows`` complete rows of ``metrics.jsonl`` (those a checkpoint covers;
        without that count, the rows up to ``step``): rows logged after it are redone on resume
        or rollback, and a row cut off by a kill is dropped. Rewritten atomically."""
        p = self._metrics_path()
        keep: list[str] = []
        if p.exists():
            for line in p.read_text(encoding="utf-8").splitlines():
                if rows is not None and len(keep) >= rows:
                    break
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by a kill
                if not isinstance(row, dict):
                    continue
                if rows is None and (row.get("step", 0) > step or "event" in row):
                    continue
                keep.append(line)
            with atomic_write(p) as tmp:
                tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        self.metrics_rows = len(keep)

    # -- one step ------------------------------------------------------------------------------
    def _items(self, indices: list[int], dataset) -> tuple[Tensor, dict]:
        items = [dataset[i] for i in indices]
        x = torch.stack([it[0] for it in items])
        meta = {key: torch.as_tensor([it[1][key] for it in items]) for key in items[0][1]}
        return x, meta

    def _weights_finite(self) -> bool:
        flags = [torch.isfinite(p.detach()).all() for p in self.model.parameters()]
        return bool(torch.stack(flags).all()) if flags else True

    def train_step(self, step: int) -> StepResult | str:
        """One optimiser step (``step`` 0-based). Returns the reduced metrics, or, when the step
        was not finite (nothing applied, or weights to be rolled back), the reason."""
        t = self.preset.train
        n = step + 1  # the step number of metrics.jsonl and of LUSER_FAULT_INJECT
        self.net.train()
        epoch = self.plan.epoch_of(step)
        x, meta = self._items(self.plan.local_batch(step), self.train_set)
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
        reason = None
        if not math.isfinite(float(values[0])):
            reason = "non-finite loss"
        elif not math.isfinite(float(values[1])):
            reason = "non-finite gradient"
        elif not math.isfinite(float(values[2])) or float(values[2]) > EXPLODED_RESIDUAL:
            reason = f"exploding fixed point (forward residual {float(values[2]):.3g})"
        if reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            return reason
        self.optimizer.step()
        if self.faults.take("nan-weights", n):
            with torch.no_grad():
                next(iter(self.model.parameters())).fill_(math.nan)
        if self.dist.any_flag(not self._weights_finite()):
            return "non-finite weights after the optimiser step"
        final = output[0] if isinstance(output, tuple) else output
        local = {
            "loss": loss_value,
            "psnr": _batch_psnr(self.preset.task, batch.x, final),
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
    def _changed_settings(self, stored: dict[str, Any]) -> list[str]:
        """Dotted preset fields that differ between a checkpoint and this run."""
        now = self.preset.model_dump(mode="json")
        changed: list[str] = []
        if self.model_name == "deq4ip" and isinstance(stored.get("model"), dict):
            # A DEQ4IP run from before model.deq4ip_norm/anchor trained the original map.
            stored = {**stored, "model": dict(stored["model"])}
            for key, original in (("deq4ip_norm", "batch"), ("deq4ip_anchor", 0.0)):
                if stored["model"].get(key) is None:
                    stored["model"][key] = original

        def walk(a: Any, b: Any, key: str) -> None:
            if isinstance(a, dict) and isinstance(b, dict):
                for k in sorted(set(a) | set(b)):
                    walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)
            elif a != b:
                changed.append(f"{key} {a!r} -> {b!r}")

        walk(stored, now, "")
        return changed

    def _open_run(self) -> dict[str, Any] | None:
        """Rank 0's view of the run folder: the checkpoint to resume from, or None for a new
        run. Raises a one-line error for a folder that cannot be used: a file, a folder holding
        files luser did not write, or a run with other settings (``--resume``). Reads only:
        nothing is created before the whole trainer is built (:meth:`_lock_run_folder`)."""
        check_run_folder(self.out, resume=self.resume)
        resumable = ckpt.load_resumable(self.out, warn=self.log) if self.resume else None
        if resumable is not None:
            ckpt.check_compatible(
                resumable,
                task=self.preset.task,
                model=self.model_name,
                image_size=self.preset.image_size,
                channels=self.channels,
                source=f"run folder {self.out}",
            )
            changed = [
                c for c in self._changed_settings(resumable["preset"]) if not c.startswith(LENGTH)
            ]
            if changed:
                raise ConfigError(
                    f"{self.out} was trained with other settings ({'; '.join(changed[:3])}); "
                    "--resume continues a run only with its own settings (--steps/--epochs may "
                    "extend it): drop those flags or choose another --out"
                )
            return resumable
        existing = [n for n in (ckpt.LAST, ckpt.PREV, ckpt.BEST) if (self.out / n).exists()]
        if existing and not self.resume:
            raise ConfigError(
                f"{self.out} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        if self.resume:
            self.log(f"no checkpoint in {self.out} to resume from; starting a new run")
        return None

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
        """Rank 0: create the run folder and take its lock (:class:`RunLock`), then check again
        what the folder holds, now that no other ``luser train`` can write it. The outcome (or
        its one-line error) reaches every rank."""
        problem: tuple[str, str] | None = None
        if self.dist.is_main:
            try:
                try:
                    self.out.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    why = e.strerror or type(e).__name__
                    raise OutputError(f"--out {self.out}: cannot create it ({why})") from None
                self._lock = RunLock(self.out).acquire()  # released by run() or process end
                check_run_folder(self.out, resume=self.resume)
                if self.resume:
                    now = ckpt.load_resumable(self.out, warn=lambda _m: None)
                    before = self._resumable
                    if (now and now["step"]) != (before and before["step"]):
                        raise ConfigError(
                            f"{self.out} changed while this run was starting (another luser "
                            "train wrote it); run the command again"
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
                self._truncate_metrics(resumable.get("metrics_rows"), self.step)
            else:
                self.metrics_rows = int(resumable.get("metrics_rows", 0))
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
            self._metrics_path().unlink(missing_ok=True)
        if self.dist.is_main:
            with atomic_write(self.out / "preset.toml") as tmp:
                tmp.write_text(preset_to_toml(self.preset), encoding="utf-8")
        self._remember_good()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM only set a flag; the loop saves and stops at the next step boundary."""

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

    def _rollback(self, step: int, reason: str) -> None:
        """Step ``step`` (0-based) failed: restore the last saved state with half the lr."""
        assert self._good_state is not None
        good = self._good_state
        self.rollbacks += 1
        limit = self.preset.train.max_rollbacks
        if self.rollbacks > limit:
            self._write_metrics(
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
        if self.dist.is_main:
            self._truncate_metrics(int(good["metrics_rows"]), self.step)
        else:
            self.metrics_rows = int(good["metrics_rows"])
        self.lr_scale *= 0.5
        self.log(
            f"warning: step {step + 1}: {reason}; rolled back to step {self.step} with learning "
            f"rate x{self.lr_scale:g} (rollback {self.rollbacks} of {limit})"
        )
        self._write_metrics(
            {
                "step": self.step,
                "event": "rollback",
                "failed_step": step + 1,
                "reason": reason,
                "lr_scale": self.lr_scale,
                "rollbacks": self.rollbacks,
            }
        )
        good["metrics_rows"] = self.metrics_rows  # a later rollback keeps this row

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

    def _plot_curves(self, force: bool = False) -> None:
        """Redraw ``training_curve.png`` (rank 0) at the end, and meanwhile at most every
        :data:`PLOT_EVERY_S` seconds (drawing costs about a second)."""
        from luser_cli.training.curves import plot_training_curves

        now = time.monotonic()
        if not self.dist.is_main or not (force or now - self._last_plot >= PLOT_EVERY_S):
            return
        if self._metrics_path().exists():
            plot_training_curves(
                self._metrics_path(),
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

        with self._signals():
            self._prepare_run_dir()
            start_step = self.step
            t0 = time.perf_counter()
            progress = TrainingProgress(self.total_steps, start_step, enabled=self.show_progress)
            if start_step:  # resumed: count the earlier steps' backward solves too
                progress.backward = backward_convergence(read_metrics(self._metrics_path()))
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
                        self._plot_curves(force=done)
                    if self.step % self.save_every == 0 or done or best:
                        self.save(best=best)
        bwd = None
        if self.dist.is_main:
            bwd = backward_convergence(read_metrics(self._metrics_path()))
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
