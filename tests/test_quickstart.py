"""``luser quickstart``: the README's main job, at toy size (the measured run is in the README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.cli import assert_clean_error, run_cli

from luser_cli.quickstart import QuickstartSettings
from luser_cli.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--image-size", "16", "--steps", "2", "--eval-images", "2", "--threads", "1"]


def test_quickstart_trains_evaluates_and_reconstructs(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    code, stdout, err = run_cli(["quickstart", "--out", out, *TINY, "--no-progress"])
    assert code == 0, err
    for name in ("eval.json", "comparison.png", "sample.png", "sample_scan.h5", "sample_recon.png"):
        assert (out / name).is_file(), name
    assert (out / "run" / ckpt.LAST).is_file()
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["settings"]["steps"] == 2 and summary["eval"]["n_images"] == 2
    assert summary["settings"]["initial"] == summary["settings"]["data_step"] == "fbp"
    assert summary["eval"]["best_classical"] == "tv"
    assert summary["eval"]["model_minus_best_classical_db"] == pytest.approx(
        summary["eval"]["model_psnr"] - summary["eval"]["best_classical_psnr"]
    )
    # CT starts from the FBP, and the printed train command says so.
    preset = ckpt.load_checkpoint(out / "run" / ckpt.LAST)["preset"]
    assert preset["model"]["initial"] == "fbp" and preset["train"]["lr"] == 3e-3
    assert preset["train"]["model_lr"] == {"deq4ip": 1e-3}  # ct.toml's, as no --lr was given
    assert "--lr" not in err
    assert preset["model"]["data_step"] == "fbp" and preset["train"]["loss"] == "psnr"
    # ct.toml's photon-count ray weights and wsd schedule come with the preset.
    assert preset["model"]["ray_weight_power"] == 0.5 and preset["train"]["scheduler"] == "wsd"
    assert preset["solver"]["forward"]["tol"] == preset["solver"]["backward"]["tol"] == 1e-2
    assert "--fp-tol 0.01 --bwd-tol 0.01" in err
    assert "--initial fbp" in err and "luser reconstruct" in err
    assert "held-out built-in ct images" in stdout


@pytest.mark.parametrize(
    ("flag", "expect"),
    [("--initial", "'fbp' needs task ct"), ("--data-step", "data_step: fbp")],
)
def test_quickstart_refuses_fbp_for_another_task(flag: str, expect: str, tmp_path: Path) -> None:
    out = tmp_path / "qs"
    args = ["quickstart", "--task", "mri4x", flag, "fbp", "--out", out, *TINY]
    code, _, err = run_cli(args)
    assert_clean_error(code, err, expect=expect)
    assert not out.exists()


def test_settings_take_the_presets_learning_rate() -> None:
    """No quickstart default overrides a preset's rate (DEQ4IP diverged at CT's 3e-3)."""
    run = Path("run")
    assert QuickstartSettings().lr is None and "--lr" not in QuickstartSettings().train_args(run)
    assert "--lr 0.002" in " ".join(QuickstartSettings(lr=2e-3).train_args(run))


def test_settings_default_initial_estimate() -> None:
    assert QuickstartSettings().initial == "fbp" and QuickstartSettings().steps == 500
    assert QuickstartSettings(task="mri4x").initial == "auto"
    assert QuickstartSettings(task="ct", initial="adjoint").initial == "adjoint"


def test_settings_default_data_step() -> None:
    assert QuickstartSettings().data_step == "fbp"
    assert QuickstartSettings(task="deblur").data_step == "gradient"
    assert QuickstartSettings(data_step="gradient").data_step == "gradient"
    assert "--data-step fbp" in " ".join(QuickstartSettings().train_args(Path("r")))
    assert "--fp-tol" not in QuickstartSettings(tol=None).train_args(Path("r"))


@pytest.mark.parametrize(
    ("args", "expect"),
    [(["--loss", "l2"], "train.loss"), (["--tol", "-1"], "solver.forward.tol")],
)
def test_quickstart_refuses_bad_settings(args: list[str], expect: str, tmp_path: Path) -> None:
    out = tmp_path / "qs"
    code, _, err = run_cli(["quickstart", *args, "--out", out, *TINY])
    assert_clean_error(code, err, expect=expect)
    assert not out.exists()
