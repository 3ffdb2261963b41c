"""The ``luser train`` flag surface and the run folder it writes (in this process, 16x16 MRI).

Flags: --steps/--epochs/--batch-size/--image-size/--lr/--aux-loss/--seed/--device/--resume/
--save-every; run folder: checkpoint_last/best (+ prev), metrics.jsonl (loss, PSNR, fixed-point
iterations for DEQ models), training_curve.png, preset.toml, run.json; ``--preset FILE`` with
unknown keys or bad values rejected naming the field; flags override preset fields.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest
import torch
from fixtures.cli import assert_clean_error, run_cli

from luser_cli.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["train", "--task", "mri4x", "--threads", "1", "--no-progress"]
SMALL = ["--image-size", "16", "--train-size", "8", "--val-size", "2"]
FAST = ["--fp-max-iter", "4", "--bwd-max-iter", "4"]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def preset_of(run: Path) -> dict:
    return tomllib.loads((run / "preset.toml").read_text())


def ok(args: list) -> str:
    code, out, err = run_cli(args)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def deq_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    before = torch.get_num_threads()
    flags = ["--steps", "4", "--batch-size", "2", "--lr", "0.002", "--aux-loss", "--seed", "7"]
    flags += ["--device", "cpu", "--save-every", "3", "--warmup-steps", "2"]
    ok([*TRAIN, *SMALL, *FAST, "--model", "luser-dw", *flags, "--out", out])
    torch.set_num_threads(before)
    return out


def test_run_folder_contents(deq_run: Path) -> None:
    names = {p.name for p in deq_run.iterdir()}
    assert names == {
        ckpt.LAST,
        ckpt.PREV,
        ckpt.BEST,
        "metrics.jsonl",
        "training_curve.png",
        "preset.toml",
        "run.json",
        ".luser-run.lock",  # the run folder's lock (released; it marks the folder as luser's)
    }
    assert (deq_run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((deq_run / "run.json").read_text())
    assert summary["steps"] == 4 and summary["model"] == "luser-dw" and summary["task"] == "mri4x"
    assert summary["device"] == "cpu" and summary["world_size"] == 1
    for key in ("parameters", "seconds", "best_val_psnr", "final_loss", "rollbacks"):
        assert key in summary


def test_flags_reach_the_preset_and_the_run(deq_run: Path) -> None:
    p = preset_of(deq_run)
    assert p["image_size"] == 16
    t = p["train"]
    assert (t["steps"], t["batch_size"], t["lr"], t["seed"], t["save_every"]) == (4, 2, 0.002, 7, 3)
    assert t["warmup_steps"] == 2
    assert t["aux_loss"] is True
    train_rows = [r for r in rows(deq_run) if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    # --warmup-steps 2: half of --lr on the first step, then the cosine schedule from --lr.
    lrs = [r["lr"] for r in train_rows]
    cosine = [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert lrs == pytest.approx(
        [0.002 * w * c for w, c in zip([0.5, 1, 1, 1], cosine, strict=True)]
    )
    # --save-every 3: saved at step 3 and at the end (4, also the one validation: best).
    assert ckpt.load_checkpoint(deq_run / ckpt.LAST)["step"] == 4
    assert ckpt.load_checkpoint(deq_run / ckpt.PREV)["step"] == 3
    assert ckpt.load_checkpoint(deq_run / ckpt.BEST)["step"] == 4


def test_deq_metrics_rows_name_loss_psnr_and_fixed_point_iterations(deq_run: Path) -> None:
    train_rows = [r for r in rows(deq_run) if "loss" in r]
    for r in train_rows:
        for key in ("loss", "psnr", "lr", "fp_forward_iters", "fp_backward_iters"):
            assert isinstance(r[key], float), key
        assert "fp_nonconverged" in r and "fp_forward_residual_max" in r
    val_rows = [r for r in rows(deq_run) if r.get("split") == "val"]
    assert [r["step"] for r in val_rows] == [4]  # each epoch: 8 items / batch 2 = 4 steps
    assert all("val_psnr" in r and "val_ssim" in r for r in val_rows)


def test_unrolled_model_rows_have_no_fixed_point_fields(tmp_path: Path) -> None:
    ok([*TRAIN, *SMALL, "--model", "lu-dncnn", "--steps", "1", "--out", tmp_path / "run"])
    (row,) = [r for r in rows(tmp_path / "run") if "loss" in r]
    assert not any(k.startswith("fp_") for k in row)


def test_epochs_count_steps_and_clear_a_preset_step_count(tmp_path: Path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text('task = "mri4x"\nimage_size = 16\n[train]\nsteps = 50\n')
    run = tmp_path / "run"
    ok([*TRAIN, *SMALL, *FAST, "--preset", preset, "--epochs", "2", "-b", "4", "--out", run])
    assert [r["step"] for r in rows(run) if "loss" in r] == [1, 2, 3, 4]  # 2 x (8 / 4)
    assert [r["epoch"] for r in rows(run) if "loss" in r] == [0, 0, 1, 1]
    assert preset_of(run)["train"]["epochs"] == 2 and "steps" not in preset_of(run)["train"]


def test_flags_override_preset_fields(tmp_path: Path) -> None:
    preset = tmp_path / "p.toml"
    preset.write_text(
        'task = "mri4x"\nimage_size = 24\n[model]\nstages = 2\n'
        "[train]\nsteps = 3\nlr = 0.001\nseed = 1\n[data]\nval_size = 2\ntrain_size = 8\n"
    )
    run = tmp_path / "run"
    flags = ["--image-size", "16", "--steps", "1", "--fp-graph", "keep"]
    ok([*TRAIN, *FAST, "--preset", preset, *flags, "--out", run])
    p = preset_of(run)
    assert p["image_size"] == 16 and p["train"]["steps"] == 1  # flags win
    assert p["solver"]["graph"] == "keep"
    assert p["train"]["lr"] == 0.001 and p["model"]["stages"] == 2  # the rest from the file
    assert ckpt.load_checkpoint(run / ckpt.LAST)["image_size"] == 16


def test_resume_flag_continues_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok([*TRAIN, *SMALL, *FAST, "--steps", "2", "-b", "4", "--out", run])
    code, out, err = run_cli([*TRAIN, "--steps", "3", "--resume", "--out", run])
    assert code == 0, err
    assert "resumed" in err and "at step 2" in err and "for 3 steps" in out
    assert [r["step"] for r in rows(run) if "loss" in r] == [1, 2, 3]


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('task = "mri4x"\nimage_size = 16\n[train]\nlearning_rate = 0.1\n', "train.learning_rate"),
        ('task = "mri4x"\nimage_size = 16\ncolour = "red"\n', "colour: unknown key"),
        ('task = "mri4x"\nimage_size = 16\n[train]\nlr = -1\n', "train.lr"),
        ('task = "mri4x"\nimage_size = 16\n[train]\nbatch_size = "four"\n', "train.batch_size"),
        ('task = "mri4x"\nimage_size = 3\n', "image_size"),
        ('task = "mri4x"\nimage_size = 16\n[solver.forward]\ntol = "x"\n', "solver.forward.tol"),
        ('task = "mri4x"\nimage_size = 16\n[physics]\nacceleration = 0\n', "physics"),
        ('task = "ct"\nimage_size = 16\n', "is for task 'ct', not 'mri4x'"),
        ('task = "mri4x"\nimage_size = 16\n[model]\ninitial = "fbp"\n', "'fbp' needs task ct"),
        ('task = "mri4x"\nimage_size = 16\n[model]\ndata_step = "fbp"\n', "data_step: fbp"),
        ('task = "mri4x"\nimage_size = 16\n[train\n', "not valid TOML"),
    ],
)
def test_bad_preset_file_is_rejected_naming_the_field(
    toml: str, field: str, tmp_path: Path
) -> None:
    preset = tmp_path / "bad.toml"
    preset.write_text(toml)
    code, _, err = run_cli([*TRAIN, "--preset", preset, "--out", tmp_path / "run"])
    assert_clean_error(code, err, expect=field)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--batch-size", "0"], "train.batch_size"),
        (["--lr", "5"], "train.lr"),
        (["--warmup-steps", "-1"], "train.warmup_steps"),
        (["--initial", "fbp"], "model.initial: method 'fbp' needs task ct; task mri4x offers"),
        (["--initial", "sirt"], "model.initial"),
        (["--data-step", "fbp"], "model.data_step: fbp (filtered back-projection) is for CT"),
        (["--data-step", "newton"], "model.data_step"),
        (["--ray-weights", "0.5"], "model.ray_weight_power: photon-count weights are for CT"),
        (["--scheduler", "step"], "train.scheduler"),
        (["--loss", "l1"], "train.loss"),
        (["--steps", "0"], "train.steps"),
        (["--image-size", "2"], "image_size"),
        (["--save-every", "-1"], "train.save_every"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--threads", "0"], "--threads"),
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--preset", "missing.toml"], "preset file not found"),
    ],
)
def test_bad_flags_are_one_line_errors(args: list[str], reason: str, tmp_path: Path) -> None:
    code, _, err = run_cli([*TRAIN, *args, "--out", tmp_path / "run"])
    assert_clean_error(code, err, expect=reason)


def test_device_cuda_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    args = [*TRAIN, *SMALL, *FAST, "--steps", "1", "--device", "cuda", "--out", tmp_path / "r"]
    code, _, err = run_cli(args)
    if torch.cuda.is_available():
        assert code == 0, err
    else:
        assert_clean_error(code, err, expect="no CUDA device")


def test_psnr_loss_is_stored_logged_and_plotted(tmp_path: Path) -> None:
    """``--loss psnr``: the logged loss is minus a PSNR in dB (negative); the curve is drawn."""
    run = tmp_path / "run"
    flags = ["--steps", "2", "--batch-size", "2", "--loss", "psnr", "--model", "lu-dncnn"]
    ok([*TRAIN, *SMALL, *flags, "--out", run])
    assert preset_of(run)["train"]["loss"] == "psnr"
    losses = [r["loss"] for r in rows(run) if "loss" in r]
    assert len(losses) == 2 and all(-80 < v < 0 for v in losses)
    assert (run / "training_curve.png").stat().st_size > 0
