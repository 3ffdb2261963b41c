"""Train -> eval -> reconstruct, on built-in data and on small files in each real format.

Runs are tiny (16-24 px, a few steps) so the whole file stays well under a minute; the quality
bars of the README are measured by the benchmark, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from fixtures.cli import assert_clean_error, run_cli
from fixtures.files import make_fastmri_file, make_jpg, make_lodopab_pair, make_nifti_volume

from luser_cli.models.data_steps import FBPStep, GradientStep
from luser_cli.operators.fbp import filtered_back_projection
from luser_cli.physics import build_noise, build_operator, simulate
from luser_cli.reconstruct import get_method
from luser_cli.runs import load_trained

TINY = ["--steps", "2", "--batch-size", "2", "--val-size", "2", "--threads", "1", "--no-progress"]
FAST_SOLVER = ["--fp-max-iter", "6", "--bwd-max-iter", "6"]


def train(out: Path, task: str, model: str, size: int, *extra: str) -> None:
    args = ["train", "--task", task, "--model", model, "--image-size", str(size), "--out", out]
    code, stdout, err = run_cli([*args, *TINY, *FAST_SOLVER, *extra])
    assert code == 0, err
    assert "trained" in stdout


@pytest.fixture(scope="module")
def mri_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mri"
    train(out, "mri4x", "luser-sw", 16)
    return out


def test_run_folder_contents(mri_run: Path) -> None:
    for name in (
        "checkpoint_last.pt",
        "checkpoint_best.pt",
        "metrics.jsonl",
        "preset.toml",
        "run.json",
        "training_curve.png",
    ):
        assert (mri_run / name).is_file(), name
    rows = [json.loads(line) for line in (mri_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["fp_forward_iters"] >= 1 and "fp_backward_iters" in r for r in steps)
    assert any(r.get("split") == "val" and np.isfinite(r["val_psnr"]) for r in rows)


def test_eval_json_and_figure(mri_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    fig = tmp_path / "cmp.png"
    code, stdout, err = run_cli(
        ["eval", mri_run, "--n", "3", "--json", out, "--figure", fig, "--threads", "1"]
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["task"] == "mri4x" and result["model"] == "luser-sw"
    assert result["n_images"] == 3
    assert {"model", "zero-filled", "tv"} <= set(result["metrics"])
    for m in result["metrics"].values():
        assert np.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1
    assert result["metrics"]["model"]["operator_applications_per_image"] == 8
    assert result["metrics"]["model"]["fp_forward_iterations_per_image"] >= 8
    assert fig.stat().st_size > 1000
    assert "model - best classical" in stdout


@pytest.mark.parametrize("suffix", [".png", ".h5", ".npy", ".nii.gz"])
def test_reconstruct_with_model_every_output(mri_run: Path, tmp_path: Path, suffix: str) -> None:
    vol = tmp_path / "vol.nii.gz"
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    make_nifti_volume(vol, (16, 16, 3), affine=affine)
    scan = tmp_path / "scan.h5"
    code, _, err = run_cli(["simulate", vol, "-t", "mri4x", "-o", scan])
    assert code == 0, err
    out = tmp_path / f"recon{suffix}"
    code, _, err = run_cli(
        ["reconstruct", scan, "-o", out, "--checkpoint", mri_run, "--no-progress"]
    )
    assert code == 0, err
    if suffix == ".h5":
        with h5py.File(out) as f:
            assert f["reconstruction"].shape == (3, 16, 16)
    elif suffix == ".npy":
        assert np.load(out).shape == (3, 16, 16)
    elif suffix == ".nii.gz":
        img = nib.load(out)
        assert img.shape == (16, 16, 3)
        np.testing.assert_allclose(img.affine, affine)


@pytest.mark.parametrize("with_mask", [False, True])
def test_reconstruct_fastmri_file_with_model(
    mri_run: Path, tmp_path: Path, with_mask: bool
) -> None:
    f = tmp_path / "file1000.h5"
    make_fastmri_file(f, n_slices=2, kspace_shape=(16, 16), with_mask=with_mask)
    out = tmp_path / "recon.h5"
    args = ["reconstruct", f, "-o", out, "--checkpoint", mri_run, "--no-progress"]
    code, _, err = run_cli(args if with_mask else [*args, "--task", "mri4x"])
    assert code == 0, err
    with h5py.File(out) as h:
        rec = h["reconstruction"][()]
    assert rec.shape == (2, 16, 16) and np.isfinite(rec).all()
    # raw fastMRI units (~1e-4) in, raw units out: the model works on the normalised volume
    assert 1e-6 < float(np.abs(rec).max()) < 1e-2


def test_latest_is_the_newest_run_and_the_default_is_shipped(
    mri_run: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("LUSER_RUNS", str(mri_run.parent))
    f = tmp_path / "file1.h5"
    make_fastmri_file(f, n_slices=1, kspace_shape=(16, 16), with_mask=True)
    args = ["reconstruct", f, "--no-progress", "-o"]
    code, stdout, err = run_cli([*args, tmp_path / "r.png", "--checkpoint", "latest"])
    assert code == 0, err
    assert "model" in stdout and "newest local mri4x run" in err
    code, _, err = run_cli([*args, tmp_path / "r1.png"])  # no --checkpoint: the shipped model
    assert code == 0, err
    assert "the shipped mri4x model" in err
    monkeypatch.setenv("LUSER_RUNS", str(tmp_path / "empty"))
    code, _, err = run_cli([*args, tmp_path / "r2.png", "--checkpoint", "latest"])
    assert_clean_error(code, err, expect="no trained run for task mri4x")
    assert not (tmp_path / "r2.png").exists()


def test_checkpoint_for_another_task_is_refused_another_size_announced(
    mri_run: Path, tmp_path: Path
) -> None:
    obs, _, _ = make_lodopab_pair(tmp_path, "test", 0, n=1)
    out = tmp_path / "ct.png"
    code, _, err = run_cli(["reconstruct", obs, "-o", out, "--checkpoint", mri_run])
    assert_clean_error(code, err, expect="trained for task 'mri4x', not 'ct'")
    assert not out.exists()
    big = tmp_path / "big.h5"
    make_fastmri_file(big, n_slices=1, kspace_shape=(24, 24), with_mask=True)
    code, _, err = run_cli(["reconstruct", big, "-o", out, "--checkpoint", mri_run])
    assert code == 0, err
    assert "trained at 16x16, applied at 24x24" in err
    assert out.exists()


def _celeba(root: Path) -> Path:
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    lines = []
    for i in range(1, 9):
        make_jpg(folder / f"{i:06d}.jpg", size=(218, 178), channels=3, seed=i)
        lines.append(f"{i:06d}.jpg {0 if i <= 6 else (1 if i == 7 else 2)}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def _lodopab(root: Path) -> Path:
    root.mkdir()
    for split in ("train", "validation", "test"):
        make_lodopab_pair(root, split, 0, n=2)
    return root


def _fastmri(root: Path) -> Path:
    for split, n in (("singlecoil_train", 2), ("singlecoil_val", 4)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            make_fastmri_file(root / split / f"file{split[-3:]}{i}.h5", 3, (24, 24), seed=i)
    return root


def _nifti(root: Path) -> Path:
    root.mkdir()
    make_nifti_volume(root / "vol.nii.gz", (24, 24, 12))
    return root


@pytest.mark.parametrize(
    ("task", "maker"),
    [("deblur", _celeba), ("ct", _lodopab), ("mri4x", _fastmri), ("ct", _nifti)],
)
def test_train_and_eval_on_real_formats(tmp_path: Path, task: str, maker) -> None:
    data = maker(tmp_path / "data")
    run = tmp_path / "run"
    train(run, task, "luser-dw", 16, "--data", str(data))
    code, _, err = run_cli(
        [
            "eval",
            run,
            "--data",
            data,
            "--n",
            "2",
            "--json",
            tmp_path / "e.json",
            "--methods",
            "adjoint",
            "--threads",
            "1",
        ]
    )
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["data"] == str(data) and result["n_images"] >= 1
    assert np.isfinite(result["metrics"]["model"]["psnr"])


def test_fbp_start_and_data_step_are_trained_stored_and_used_by_reconstruct(
    tmp_path: Path,
) -> None:
    """``--initial fbp --data-step fbp --ray-weights 0.5`` (CT, ct.toml's recipe, spelled out):
    stored in the run's preset; the loaded model takes count-weighted FBP data steps, and
    reconstruct starts from the FBP."""
    run = tmp_path / "ct"
    train(
        run, "ct", "luser-dw", 16, "--initial", "fbp", "--data-step", "fbp", "--ray-weights", "0.5"
    )
    trained = load_trained(run, "cpu")
    assert trained.preset.model.initial == "fbp"
    assert trained.preset.model.data_step == trained.model.data_step == "fbp"
    assert trained.preset.model.ray_weight_power == trained.model.ray_weight_power == 0.5
    assert trained.model.mu_max == trained.preset.physics["mu_max"]
    op = build_operator("ct", 16)
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = simulate(op, build_noise("ct"), x, torch.Generator().manual_seed(1))
    method = get_method("model", "ct", {"checkpoint": run})
    x0 = filtered_back_projection(op, y, filter="hann")
    with torch.no_grad():
        got = method("ct", op, y)
        want = trained.model(y, op, x0)
        adjoint_start = trained.model(y, op, op.A_adjoint(y) / op.norm_sq())
        trained.model.data_consistency = FBPStep()  # the same step without ray weights
        unweighted = trained.model(y, op, x0)
        trained.model.data_consistency = GradientStep()
        gradient_steps = trained.model(y, op, x0)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, adjoint_start)
    assert not torch.allclose(got, unweighted)
    assert not torch.allclose(got, gradient_steps)
