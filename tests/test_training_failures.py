"""Training fails loudly, not silently (issue 7).

Faults are injected through the documented test hook ``LUSER_FAULT_INJECT=KIND@STEP,...``
(:class:`luser_cli.training.loop.FaultPlan`) in this process: a NaN loss, an infinite gradient,
an exploding fixed point and NaN weights each roll the run back to its last saved state with half
the learning rate; past ``train.max_rollbacks`` the run stops with one line and exit code 4, and
no checkpoint ever holds NaN weights. Fixed-point non-convergence is counted, logged and shown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fixtures.cli import run_cli

from luser_cli.errors import CheckpointError, ConfigError
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.faults import FaultPlan
from luser_cli.training.progress import TrainingProgress
from luser_cli.training.recovery import TrainingFailed

pytestmark = pytest.mark.usefixtures("one_thread")

PRESET = """
task = "mri4x"
image_size = 16
[model]
stages = 2
[train]
steps = {steps}
batch_size = 4
save_every = {save_every}
val_every = 100
max_rollbacks = {max_rollbacks}
[data]
train_size = 8
val_size = 2
"""
TRAIN = ["train", "--task", "mri4x", "--model", "luser-dw", "--threads", "1", "--no-progress"]


def train(
    d: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: str,
    *args: str,
    steps: int = 4,
    save_every: int = 1,
    max_rollbacks: int = 3,
) -> tuple[int, str, str, Path]:
    preset = d / "p.toml"
    preset.write_text(
        PRESET.format(steps=steps, save_every=save_every, max_rollbacks=max_rollbacks),
        encoding="utf-8",
    )
    monkeypatch.setenv("LUSER_FAULT_INJECT", faults)
    code, out, err = run_cli([*TRAIN, "--preset", preset, "--out", d / "run", *args])
    monkeypatch.delenv("LUSER_FAULT_INJECT")
    return code, out, err, d / "run"


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def finite_weights(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["model_state"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_every_fault_kind_rolls_back_with_half_the_learning_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = "nan@2,inf-grad@3,explode@4,nan-weights@4"
    code, _, err, run = train(tmp_path, monkeypatch, faults, max_rollbacks=4, steps=5)
    assert code == 0, err
    warnings = err.strip().splitlines()
    assert len(warnings) == 4 and all(w.startswith("warning: step ") for w in warnings), err
    events = [r for r in rows(run) if r.get("event") == "rollback"]
    assert [(e["failed_step"], e["step"]) for e in events] == [(2, 1), (3, 2), (4, 3), (4, 3)]
    assert [e["reason"] for e in events] == [
        "non-finite loss",
        "non-finite gradient",
        "exploding fixed point (forward residual 1e+06)",
        "non-finite weights after the optimiser step",
    ]
    assert [e["lr_scale"] for e in events] == [0.5, 0.25, 0.125, 0.0625]
    # Each step logged once, in order, after its rollbacks; lr follows the lowered scale.
    train_rows = [r for r in rows(run) if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r["loss"]) for r in train_rows)
    last = torch.load(run / ckpt.LAST, weights_only=True)
    assert last["lr_scale"] == 0.0625 and last["rollbacks"] == 4
    assert json.loads((run / "run.json").read_text())["rollbacks"] == 4
    assert finite_weights(run / ckpt.LAST) and finite_weights(run / ckpt.PREV)


def test_rollback_goes_back_to_the_last_saved_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved every 2 steps: a failure at step 4 replays step 3 from the step-2 state."""
    code, _, err, run = train(tmp_path, monkeypatch, "nan@4", save_every=2)
    assert code == 0, err
    assert "step 4: non-finite loss; rolled back to step 2 with learning rate x0.5" in err
    steps = [r.get("step") for r in rows(run) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # the first step 3 was dropped with the rollback


def test_repeated_divergence_stops_with_one_line_and_a_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err, run = train(tmp_path, monkeypatch, ",".join(["nan@3"] * 3), max_rollbacks=2)
    assert code == TrainingFailed.exit_code == 4
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in err, err
    assert lines[-1].startswith("error: training diverged at step 3 (non-finite loss)")
    assert "after 2 rollback(s)" in lines[-1] and f"{ckpt.LAST} (step 2)" in lines[-1]
    assert rows(run)[-1]["event"] == "failed"
    assert torch.load(run / ckpt.LAST, weights_only=True)["step"] == 2
    assert finite_weights(run / ckpt.LAST)


def test_divergence_before_any_checkpoint_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err, run = train(tmp_path, monkeypatch, "nan@1", max_rollbacks=0)
    assert code == 4 and err.count("\n") == 1, err
    assert "no checkpoint was saved" in err
    assert not (run / ckpt.LAST).exists()


def test_nan_weights_are_never_saved(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not finite"):
        ckpt.save_checkpoint(tmp_path / ckpt.LAST, {"model_state": {"w": torch.tensor([math.nan])}})
    assert not list(tmp_path.iterdir())


def test_fault_hook_rejects_bad_entries() -> None:
    assert FaultPlan("nan@2, nan@2").pending == [("nan", 2), ("nan", 2)]
    for bad in ("nan", "boom@2", "nan@x"):
        with pytest.raises(ConfigError, match="LUSER_FAULT_INJECT"):
            FaultPlan(bad)


def test_fixed_point_nonconvergence_is_counted_logged_and_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err, run = train(tmp_path, monkeypatch, "", "--fp-tol", "1e-9", "--fp-max-iter", "2")
    assert code == 0, err
    train_rows = [r for r in rows(run) if "loss" in r]
    # 2 stages x 4 samples per step, none converged to 1e-9 in 2 iterations.
    assert [r["fp_nonconverged"] for r in train_rows] == [8.0] * 4
    assert all(r["fp_forward_iters"] == 2.0 for r in train_rows)
    assert json.loads((run / "run.json").read_text())["fp_nonconverged"] == 32

    bar = TrainingProgress(4, enabled=False)
    bar.update(1, 0.01, 20.0, {"fp_forward_iters": 2.0, "fp_backward_iters": 3.0}, 8)
    assert "not converged 8" in bar._progress.tasks[0].fields["info"]
