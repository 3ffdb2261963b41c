"""Crash-safe, exact resume of ``luser train`` (issue 7).

A reference run is trained once in this process; the other runs are real processes that are
killed with SIGKILL (inside a checkpoint save, and at a random moment), stopped with SIGINT /
SIGTERM, or handed damaged run folders, then resumed. A resumed run must end with *bitwise* the
weights, optimiser state, best checkpoint and ``metrics.jsonl`` rows of the uninterrupted run
(same seed, same thread count, CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fixtures.cli import run_cli

from luser_cli.training import checkpoint as ckpt
from luser_cli.training.metrics_file import MetricsLog

PRESET = """
task = "mri4x"
image_size = 16
[model]
stages = 2
[train]
steps = {steps}
batch_size = 4
save_every = 1
val_every = 2
seed = 3
[data]
train_size = 8
val_size = 2
"""
STEPS = 8  # 4 epochs of 2 steps: resumes cross epoch boundaries and validations
TRAIN = ["train", "--task", "mri4x", "--model", "luser-dw", "--threads", "1", "--no-progress"]


def write_preset(d: Path, steps: int = STEPS) -> Path:
    p = d / "tiny.toml"
    p.write_text(PRESET.format(steps=steps), encoding="utf-8")
    return p


def train_in_process(run: Path, *args: str | Path) -> tuple[int, str, str]:
    os.environ.pop("LUSER_FAULT_INJECT", None)
    return run_cli([*TRAIN, "--out", run, *args])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """An uninterrupted run of ``STEPS`` steps (in this process)."""
    assert torch.get_default_dtype() == torch.float32
    d = tmp_path_factory.mktemp("reference")
    code, _, err = train_in_process(d / "run", "--preset", write_preset(d))
    assert code == 0, err
    return d / "run"


def launch(args: list[str | Path], fault: str | None = None) -> subprocess.Popen:
    """``python -m luser_cli *args`` as a real process (one CPU thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("LUSER_FAULT_INJECT", None)
    if fault:
        env["LUSER_FAULT_INJECT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "luser_cli", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"process ended ({proc.returncode}) before it was ready: {err}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.02)


def rows(run: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; every line must be complete JSON."""
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def last_step(run: Path) -> int:
    p = run / "metrics.jsonl"
    if not p.exists():
        return 0
    steps = [0]
    for line in p.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError, ValueError):
            steps.append(int(json.loads(line).get("step", 0)))
    return max(steps)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: Path, b: Path) -> None:
    """Bitwise the same step, weights, optimiser state, lr scale and best PSNR."""
    sa, sb = load(a), load(b)
    assert sa["step"] == sb["step"]
    assert sa["lr_scale"] == sb["lr_scale"] and sa["best_val_psnr"] == sb["best_val_psnr"]
    assert sa["model_state"].keys() == sb["model_state"].keys()
    for k, v in sa["model_state"].items():
        assert torch.equal(v, sb["model_state"][k]), f"{a.name}: {k} differs"
    oa, ob = sa["optimizer_state"]["state"], sb["optimizer_state"]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k, v in oa[i].items():
            assert torch.equal(v, ob[i][k]), f"{a.name}: optimiser state {i}.{k} differs"


def assert_same_run(run: Path, ref: Path) -> None:
    """Same final and best checkpoints; the same metrics rows (timings aside), none twice."""
    assert_same_state(run / ckpt.LAST, ref / ckpt.LAST)
    assert_same_state(run / ckpt.BEST, ref / ckpt.BEST)
    got, want = rows(run), rows(ref)
    for r in got + want:
        r.pop("time_s", None)
    assert got == want
    train_steps = [r["step"] for r in got if "loss" in r]
    assert train_steps == list(range(1, STEPS + 1))
    assert not list(run.glob(".*.tmp*")), "stale temporary files left in the run folder"
    assert json.loads((run / "run.json").read_text())["steps"] == STEPS


def test_identical_runs_are_bitwise_identical(reference: Path, tmp_path: Path) -> None:
    code, _, err = train_in_process(tmp_path / "again", "--preset", write_preset(tmp_path))
    assert code == 0, err
    assert_same_run(tmp_path / "again", reference)


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_exact(reference: Path, tmp_path: Path) -> None:
    """SIGKILL at each point of a checkpoint save, then resume to the end: bitwise the same run.

    The kill points are fixed (no timing, so the test is deterministic): after the new
    checkpoint is written and before anything is renamed (``kill-save``), and after
    ``checkpoint_prev.pt`` has been replaced and before ``checkpoint_last.pt`` is
    (``kill-rotate``, where a hard-linked rotation used to leave prev and last as one file).
    """
    run = tmp_path / "run"
    first = launch([*TRAIN, "--preset", write_preset(tmp_path), "--out", run], "kill-save@3")
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL
    # Killed between writing the step-3 checkpoint and renaming it into place.
    assert load(run / ckpt.LAST)["step"] == 2 and load(run / ckpt.PREV)["step"] == 1
    assert list(run.glob(".checkpoint_last.pt.*.tmp.pt"))

    # Resume (settings come from the checkpoint); killed inside the rotation of step 5's save.
    second = launch([*TRAIN, "--out", run, "--resume"], "kill-rotate@5")
    _, err = second.communicate(timeout=120)
    assert second.returncode == -signal.SIGKILL
    assert "resumed" in err and "at step 2" in err
    assert load(run / ckpt.LAST)["step"] == 4 and load(run / ckpt.PREV)["step"] == 4
    assert not (run / ckpt.LAST).samefile(run / ckpt.PREV), "prev and last are one file"

    # Killed again while saving step 7, with rows of step 7 already in metrics.jsonl.
    third = launch([*TRAIN, "--out", run, "--resume"], "kill-save@7")
    _, err = third.communicate(timeout=120)
    assert third.returncode == -signal.SIGKILL
    assert "at step 4" in err and last_step(run) >= 7

    code, _, err = train_in_process(run, "--resume")  # the rest in this process
    assert code == 0, err
    assert_same_run(run, reference)
    assert not (run / ckpt.LAST).samefile(run / ckpt.PREV)


def copy_run(ref: Path, d: Path) -> Path:
    run = d / "run"
    shutil.copytree(ref, run)
    return run


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_last_checkpoint_warns_and_uses_previous(
    reference: Path, tmp_path: Path, damage: str
) -> None:
    run = copy_run(reference, tmp_path)
    last = run / ckpt.LAST
    data = last.read_bytes()
    last.write_bytes(
        {"truncate": data[: len(data) // 3], "garbage": os.urandom(4096), "empty": b""}[damage]
    )
    code, _, err = train_in_process(run, "--resume")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and ckpt.LAST in warnings[0], err
    assert f"using {ckpt.PREV} (step {STEPS - 1})" in warnings[0]
    assert_same_run(run, reference)


def test_no_usable_checkpoint_is_an_error_not_a_restart(reference: Path, tmp_path: Path) -> None:
    run = copy_run(reference, tmp_path)
    for name in (ckpt.LAST, ckpt.PREV):
        (run / name).write_bytes(b"not a checkpoint")
    before = (run / "metrics.jsonl").read_bytes()
    code, _, err = train_in_process(run, "--resume")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "no usable checkpoint" in lines[0]
    assert (run / "metrics.jsonl").read_bytes() == before


def test_rows_after_the_checkpoint_and_torn_rows_are_dropped(
    reference: Path, tmp_path: Path
) -> None:
    """Killed after logging step 8 (and its validation) but before saving it, mid-row."""
    run = copy_run(reference, tmp_path)
    shutil.copyfile(run / ckpt.PREV, run / ckpt.LAST)  # the step-7 checkpoint
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 9, "epoch": 4, "lo')
    (run / ".checkpoint_last.pt.0badc0de.tmp.pt").write_bytes(b"half a checkpoint")
    code, _, err = train_in_process(run, "--resume")
    assert code == 0, err
    assert "at step 7" in err
    assert_same_run(run, reference)


def test_resume_of_a_finished_run_changes_nothing(reference: Path, tmp_path: Path) -> None:
    run = copy_run(reference, tmp_path)
    code, out, err = train_in_process(run, "--resume")
    assert code == 0, err
    assert f"for {STEPS} steps" in out
    assert_same_run(run, reference)


def test_resume_with_more_steps_warns_about_the_changed_schedule(
    reference: Path, tmp_path: Path
) -> None:
    run = copy_run(reference, tmp_path)
    code, _, err = train_in_process(run, "--resume", "--steps", str(STEPS + 1))
    assert code == 0, err
    assert "changed settings" in err and f"train.steps {STEPS} -> {STEPS + 1}" in err
    assert load(run / ckpt.LAST)["step"] == STEPS + 1
    assert [r["step"] for r in rows(run) if "loss" in r] == list(range(1, STEPS + 2))


def test_sigint_saves_stops_cleanly_and_resumes_exactly(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (in this process: the loop's handler is live while it trains) at step 3."""
    write = MetricsLog.append

    def write_then_interrupt(self: MetricsLog, row: dict) -> None:
        write(self, row)
        if row.get("step") == 3 and "loss" in row:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(MetricsLog, "append", write_then_interrupt)
    run = tmp_path / "run"
    code, out, err = train_in_process(run, "--preset", write_preset(tmp_path))
    assert code == 75, err
    assert out == "" and err.splitlines() == [
        f"stopped by SIGINT at step 3; checkpoint saved in {run} (continue with --resume)"
    ]
    assert load(run / ckpt.LAST)["step"] == 3
    monkeypatch.undo()
    code, _, err = train_in_process(run, "--resume")
    assert code == 0, err
    assert_same_run(run, reference)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    """What a cluster scheduler sends before it kills a job: a real process."""
    run = tmp_path / "run"
    proc = launch([*TRAIN, "--preset", write_preset(tmp_path, steps=500), "--out", run])
    wait_for(proc, lambda: last_step(run) >= 1)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("stopped by SIGTERM at step "), lines[0]
    assert "--resume" in lines[0] and "Traceback" not in err
    step = int(lines[0].split(" at step ")[1].split(";")[0])
    assert load(run / ckpt.LAST)["step"] == step >= 1
    assert [r["step"] for r in rows(run) if "loss" in r] == list(range(1, step + 1))
    assert not list(run.glob(".*.tmp*"))
