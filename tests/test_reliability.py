"""Nothing lost, nothing half-written (issue 16): one table-driven test per failure found by a
hostile run of the CLI. Every case must give one ``error:`` line, exit code 2, no traceback, and
leave every existing file byte for byte as it was, with no new file (real disk-full and size-bomb
processes are in ``test_limits.py``; SIGKILL at each point of a save in ``test_resume.py``)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import pytest
import torch
from fixtures.cli import assert_clean_error, run_cli
from fixtures.files import make_png
from fixtures.tiny import TINY, TRAIN

from luser_cli.training import checkpoint as ckpt


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    """A finished tiny run ``run/``, its preset, an MRI scan and a PNG."""
    d = tmp_path_factory.mktemp("work")
    (d / "tiny.toml").write_text(TINY, encoding="utf-8")
    code, _, err = run_cli([*TRAIN, "--preset", d / "tiny.toml", "--out", d / "run"])
    assert code == 0, err
    make_png(d / "x.png", (16, 16))
    code, _, err = run_cli(["simulate", d / "x.png", "-t", "mri4x", "-o", d / "scan.h5"])
    assert code == 0, err
    return d


def refused(args: list, folder: Path, expect: str) -> None:
    """``luser *args`` fails cleanly (exit 2) and changes nothing under ``folder``."""
    before = tree(folder)
    code, _, err = run_cli(args)
    assert_clean_error(code, err, expect=expect)
    assert code == 2, err
    assert tree(folder) == before, "files were written, changed or removed"


# -- outputs never replace luser's run files or the input -----------------------------------------

OUTPUT_CASES: dict[str, tuple[Callable[[Path], list], str]] = {
    "eval --json checkpoint_best.pt": (
        lambda d: ["eval", d / "run", "--n", "1", "--json", d / "run" / "checkpoint_best.pt"],
        "overwrite the input",  # the run's best checkpoint is the model eval reads
    ),
    "eval --json metrics.jsonl": (
        lambda d: ["eval", d / "run", "--n", "1", "--json", d / "run" / "metrics.jsonl"],
        "belongs to the luser run",
    ),
    "eval --json run.json": (
        lambda d: ["eval", d / "run", "--n", "1", "--json", d / "run" / "run.json"],
        "belongs to the luser run",
    ),
    "eval --figure checkpoint_last.pt": (
        lambda d: ["eval", d / "run", "--n", "1", "--figure", d / "run" / "checkpoint_last.pt"],
        "belongs to the luser run",
    ),
    "eval --figure preset.toml": (
        lambda d: ["eval", d / "run", "--n", "1", "--figure", d / "run" / "preset.toml"],
        "belongs to the luser run",
    ),
    "eval CHECKPOINT --json CHECKPOINT (the input)": (
        lambda d: ["eval", d / "run" / "checkpoint_last.pt", "--n", "1",
                   "--json", d / "run" / "checkpoint_last.pt"],
        "overwrite the input",
    ),
    "reconstruct -o training_curve.png": (
        lambda d: ["reconstruct", d / "scan.h5", "-m", "zero-filled",
                   "-o", d / "run" / "training_curve.png"],
        "belongs to the luser run",
    ),
    "reconstruct -o INPUT": (
        lambda d: ["reconstruct", d / "scan.h5", "-m", "zero-filled", "-o", d / "scan.h5"],
        "overwrite the input",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_outputs_never_replace_run_files_or_the_input(case: str, work: Path) -> None:
    make, expect = OUTPUT_CASES[case]
    refused(make(work), work, expect)


def test_outputs_next_to_a_run_are_still_allowed(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    fig = tmp_path / "cmp.png"
    args = ["eval", work / "run", "--n", "1", "--json", out, "--figure", fig]
    code, _, err = run_cli([*args, "--methods", "zero-filled"])
    assert code == 0, err
    assert json.loads(out.read_text())["task"] == "mri4x"


# -- train --out: other people's files, a file, other settings, the lock --------------------------

FOREIGN: dict[str, Callable[[Path], None]] = {
    "a user's preset.toml (given as --preset)": lambda d: (d / "preset.toml").write_text(TINY),
    "metrics.jsonl": lambda d: (d / "metrics.jsonl").write_text('{"mine": 1}\n'),
    "run.json": lambda d: (d / "run.json").write_text("{}"),
    "a PNG": lambda d: make_png(d / "photo.png", (8, 8)),
}


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
@pytest.mark.parametrize("what", list(FOREIGN))
def test_train_refuses_a_folder_holding_other_files(
    what: str, resume: bool, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    FOREIGN[what](out)
    preset = out / "preset.toml" if (out / "preset.toml").exists() else tmp_path / "p.toml"
    preset.write_text(TINY, encoding="utf-8")
    args = [*TRAIN, "--preset", preset, "--out", out, *(["--resume"] if resume else [])]
    refused(args, tmp_path, "is not empty and is not a luser run folder")


@pytest.mark.parametrize("command", ["train", "quickstart"])
def test_out_naming_a_file_is_refused(command: str, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("keep me")
    args = (
        [*TRAIN, "--preset", "presets/mri4x.toml"] if command == "train" else ["quickstart"]
    ) + ["--out", tmp_path / "afile"]
    refused(args, tmp_path, "is a file, not a folder")


def test_train_into_a_finished_run_without_resume_is_refused(work: Path) -> None:
    refused([*TRAIN, "--preset", work / "tiny.toml", "--out", work / "run"], work, "--resume")


@pytest.mark.parametrize(
    "flags",
    [["--lr", "0.0003"], ["--batch-size", "4"], ["--seed", "5"], ["--loss", "psnr"]],
    ids=lambda f: f[0],
)
def test_resume_refuses_other_settings(flags: list[str], work: Path) -> None:
    refused([*TRAIN, "--out", work / "run", "--resume", *flags], work, "other settings")


def test_resume_of_a_run_saved_before_newer_settings_existed() -> None:
    """A checkpoint saved before a setting existed lacks its key; it trained with the default,
    so ``--resume`` must not call that a change (it did: runs from before ``model.init_gain``
    could not be resumed). A real change is still found."""
    from luser_cli.training.config import load_preset
    from luser_cli.training.run_folder import changed_settings

    now = load_preset("presets/mri8x.toml").model_dump(mode="json")
    old = json.loads(json.dumps(now))
    for section, key in (
        ("model", "init_gain"),
        ("model", "warm_start"),
        ("train", "jacobian_penalty"),
    ):
        del old[section][key]
    assert changed_settings(now, old, "luser-dw") == []
    now["train"]["lr"] = 0.5
    assert changed_settings(now, old, "luser-dw") == [f"train.lr {old['train']['lr']!r} -> 0.5"]
    now["train"]["lr"] = old["train"]["lr"]
    now["model"]["init_gain"] = 0.1  # the old run trained with 0.01
    assert changed_settings(now, old, "luser-dw") == ["model.init_gain 0.01 -> 0.1"]


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock, as a running ``luser train`` does."""
    code = (
        "import sys, time\n"
        "from luser_cli.training.run_lock import RunLock\n"
        "lock = RunLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_train_into_a_locked_folder_names_the_holder(work: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    holder = _hold_lock(run)
    try:
        before = tree(tmp_path)
        code, _, err = run_cli([*TRAIN, "--out", run, "--resume", "--steps", "3"])
        assert_clean_error(code, err, expect=f"in use by another luser train (PID {holder.pid})")
        assert tree(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # The OS released the lock with the process (no stale lock after kill -9).
    code, _, err = run_cli([*TRAIN, "--out", run, "--resume", "--steps", "3"])
    assert code == 0, err
    assert torch.load(run / ckpt.LAST, weights_only=True)["step"] == 3


@pytest.mark.slow
def test_two_trains_into_one_folder_at_once(tmp_path: Path) -> None:
    """Started together: one trains, the other is refused in one line; the run is not mixed."""
    (tmp_path / "tiny.toml").write_text(TINY.replace("steps = 2", "steps = 6"), encoding="utf-8")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "luser_cli",
                *TRAIN,
                "--preset",
                str(tmp_path / "tiny.toml"),
                "--out",
                str(run),
                "--seed",
                str(seed),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0, results
    loser = next(err for code, err in results if code != 0) if codes[1] else None
    if loser is not None:  # the usual case: they overlapped
        lines = [line for line in loser.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), loser
        assert "in use by another luser train" in lines[0] or "already holds a run" in lines[0]
    seeds = {torch.load(run / n, weights_only=True)["preset"]["train"]["seed"] for n in
             (ckpt.LAST, ckpt.PREV, ckpt.BEST)}  # fmt: skip
    assert len(seeds) == 1, "checkpoints from two runs"
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


# -- values refused before anything is built -----------------------------------------------------


CT_PRESET = 'task = "ct"\nimage_size = 16\n'
VALUE_CASES: dict[str, tuple[Callable[[Path, Path], list], str]] = {
    "train --seed 2**70": (lambda d, w: [*TRAIN, "--preset", w / "tiny.toml", "--out", d / "r",
                                         "--seed", str(2**70)], "train.seed"),
    "simulate --seed 2**70": (lambda d, w: ["simulate", w / "x.png", "-t", "ct", "-o", d / "s.h5",
                                            "--seed", str(2**70)], "--seed"),
    "preset batch_size = true": (lambda d, w: [*TRAIN, "--preset", _write(
        d / "b.toml", TINY.replace("batch_size = 2", "batch_size = true")), "--out", d / "r"],
        "train.batch_size"),
    "preset image_size = \"32\"": (lambda d, w: [*TRAIN, "--preset", _write(
        d / "s.toml", TINY.replace("image_size = 16", 'image_size = "32"')), "--out", d / "r"],
        "image_size"),
    "preset [physics] angles_total = 10^12": (
        lambda d, w: ["train", "--task", "ct", "--preset", _write(
            d / "ct.toml", CT_PRESET + "[physics]\nangles_total = 1000000000000\n"),
            "--out", d / "r"], "physics.angles_total"),
    "simulate --physics noise_std=Infinity": (
        lambda d, w: ["simulate", w / "x.png", "-t", "mri4x", "-o", d / "s.h5",
                      "--physics", "noise_std=Infinity"], "finite"),
    "simulate --physics photons=1e400": (
        lambda d, w: ["simulate", w / "x.png", "-t", "ct", "-o", d / "s.h5",
                      "--physics", "photons=1e400"], "finite"),
    "simulate --physics noise_std=NaN": (
        lambda d, w: ["simulate", w / "x.png", "-t", "deblur", "-o", d / "s.h5",
                      "--physics", "noise_std=NaN"], "finite"),
    "train --image-size 100000": (lambda d, w: [*TRAIN, "--preset", w / "tiny.toml",
                                                "--out", d / "r", "--image-size", "100000"],
                                  "image_size"),
}  # fmt: skip


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_bad_values_are_refused_before_anything_is_built(
    case: str, work: Path, tmp_path: Path
) -> None:
    make, expect = VALUE_CASES[case]
    args = make(tmp_path, work)  # writes its preset files first
    refused(args, tmp_path, expect)


def test_a_measurement_file_with_absurd_physics_is_refused(work: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scan.h5"
    shutil.copyfile(work / "scan.h5", scan)
    with h5py.File(scan, "r+") as f:
        physics = json.loads(f.attrs["physics"])
        physics["acceleration"] = 10**12
        f.attrs["physics"] = json.dumps(physics).encode()
    refused(["reconstruct", scan, "-o", tmp_path / "r.npy", "-m", "zero-filled"], tmp_path,
            "acceleration")  # fmt: skip


@pytest.mark.parametrize(
    "edit",
    ["step_scale shape", "a weight's shape"],
)
def test_checkpoint_tensor_shapes_are_checked_before_loading(
    edit: str, work: Path, tmp_path: Path
) -> None:
    data = torch.load(work / "run" / ckpt.LAST, weights_only=True)
    state = data["model_state"]
    if edit == "step_scale shape":
        state["step_scale"] = torch.ones(3)
    else:
        key = next(k for k, v in state.items() if v.dim() == 4)
        state[key] = state[key][:, :1].clone()
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    for args in (
        ["eval", bad, "--n", "1", "--json", tmp_path / "e.json"],
        ["reconstruct", work / "scan.h5", "-o", tmp_path / "r.npy", "-m", "model",
         "--checkpoint", bad],
    ):  # fmt: skip
        refused(args, tmp_path, "step_scale" if edit == "step_scale shape" else "do not fit")


# -- usage errors ---------------------------------------------------------------------------------

USAGE_CASES = {
    "unknown option": (["train", "--task", "ct", "--bogus"], "--bogus"),
    "non-integer": (["train", "--task", "ct", "--steps", "x"], "'--steps'"),
    "missing argument": (["simulate", "-t", "ct", "-o", "x.h5"], "'input'"),
    "missing option": (["reconstruct", "x.h5"], "'--output'"),
    "unknown command": (["trian"], "trian"),
    "bad float": (["simulate", "x.png", "-t", "ct", "-o", "x.h5", "--image-size", "1.5"],
                  "'--image-size'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_errors_are_one_line(case: str, tmp_path: Path) -> None:
    args, flag = USAGE_CASES[case]
    code, out, err = run_cli(args)
    assert_clean_error(code, err, expect=flag)
    assert code == 2 and "--help" in err and "╭" not in err and out == ""


# -- a real non-finite value through backward ----------------------------------------------------


def test_real_non_finite_training_rolls_back_and_never_saves_nan(tmp_path: Path) -> None:
    """AdamW with an absurd weight decay blows the weights up for real (no fault injection):
    the next forward gives a non-finite loss that flows through backward; every rollback
    restores the last good state and halves the learning rate; the run then stops in one
    line with the last good checkpoint untouched and finite."""
    preset = _write(
        tmp_path / "wd.toml",
        TINY.replace("steps = 2", "steps = 6").replace(
            "[train]", '[train]\noptimizer = "adamw"\nweight_decay = 1e30\nmax_rollbacks = 2'
        ),
    )
    run = tmp_path / "run"
    os.environ.pop("LUSER_FAULT_INJECT", None)
    code, _, err = run_cli([*TRAIN, "--preset", preset, "--out", run])
    assert code == 4, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "diverged at step 2 (non-finite loss)" in errors[0]
    assert err.count("rolled back to step 1") == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = [r for r in rows if r.get("event") == "rollback"]
    assert [e["lr_scale"] for e in events] == [0.5, 0.25]
    assert all(e["reason"] == "non-finite loss" for e in events)
    assert [r["step"] for r in rows if "loss" in r] == [1], "a failed step was logged"
    last = torch.load(run / ckpt.LAST, weights_only=True)
    assert last["step"] == 1
    assert all(
        torch.isfinite(t).all() for t in last["model_state"].values() if t.is_floating_point()
    )
    assert math.isfinite(rows[0]["loss"])


# -- checkpoint rotation ---------------------------------------------------------------------------


def test_prev_and_last_are_never_one_file(work: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    assert not (run / ckpt.LAST).samefile(run / ckpt.PREV)
    # A folder left by the old hard-link rotation: prev and last one inode.
    (run / ckpt.PREV).unlink()
    os.link(run / ckpt.LAST, run / ckpt.PREV)
    code, _, err = run_cli([*TRAIN, "--out", run, "--resume", "--steps", "3"])
    assert code == 0, err
    assert not (run / ckpt.LAST).samefile(run / ckpt.PREV)
    assert torch.load(run / ckpt.PREV, weights_only=True)["step"] == 2
    assert torch.load(run / ckpt.LAST, weights_only=True)["step"] == 3
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_sigkill_never_leaves_a_stale_lock(work: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    holder = _hold_lock(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(0.05)
    code, _, err = run_cli([*TRAIN, "--out", run, "--resume", "--steps", "3"])
    assert code == 0, err


def test_a_bad_file_in_a_data_folder_is_refused_before_training(tmp_path: Path) -> None:
    """An RGB24 NIfTI among good PNGs: refused from its header before anything is trained or
    written (it used to fail mid-training, after a checkpoint)."""
    import nibabel as nib
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        make_png(data / f"img{i}.png", (16, 16), seed=i)
    rgb = np.zeros((16, 16, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(data / "zz_rgb.nii"))
    args = ["train", "--task", "ct", "--data", data, "--out", tmp_path / "run",
            "--image-size", "16", "--steps", "2", "--threads", "1", "--no-progress"]  # fmt: skip
    refused(args, tmp_path, "RGB24")
    assert not (tmp_path / "run").exists()
