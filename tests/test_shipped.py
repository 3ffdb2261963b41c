"""The models shipped inside the package: files, cards, default use, --init, eval of them.

The quality check runs each shipped model on a real photograph (scikit-image's ``camera``, 64 px,
simulated with ``luser simulate``) and requires it to beat the task's simple classical baseline
(FBP, zero-filled, blurred input) by a margin a broken or untrained model cannot reach.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fixtures.cli import assert_clean_error, run_cli

from luser_cli.evaluation.metrics import psnr
from luser_cli.models.registry import count_parameters
from luser_cli.runs import load_trained
from luser_cli.shipped import SHIPPED_DIR, model_card, resolve_model, sha256_of, shipped_file
from luser_cli.training import checkpoint as ckpt
from luser_cli.training.config import preset_for_task
from luser_cli.training.step import build_training_model

TASKS = ("ct", "mri4x", "mri8x", "deblur")
#: Parameter counts of LUSER-DW (the paper's, DESIGN.md).
PARAMS = {"ct": 751_625, "mri4x": 760_849, "mri8x": 760_849, "deblur": 770_073}
BASELINE = {"ct": "fbp", "mri4x": "zero-filled", "mri8x": "zero-filled", "deblur": "input"}
#: Margin over the simple baseline (dB) at 64 px: the untrained model (identity-like prox) is
#: about level with it; the shipped models are several dB above.
MARGIN = {"ct": 1.0, "mri4x": 1.0, "mri8x": 1.0, "deblur": 1.0}


@pytest.fixture(scope="module", autouse=True)
def _threads(one_thread: None) -> None:
    """One thread for the module (see conftest)."""


@pytest.mark.parametrize("task", TASKS)
def test_shipped_file_loads_as_data_and_fits_the_architecture(task: str) -> None:
    path = shipped_file(task)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # data, not code
    assert raw["task"] == task and raw["model"] == "luser-dw"
    assert "optimizer_state" not in raw  # weights only
    trained = load_trained(path)
    assert count_parameters(trained.model) == PARAMS[task]
    fresh = build_training_model(preset_for_task(task), "luser-dw", step_scale=1.0)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in trained.model.state_dict().items()
    }


@pytest.mark.parametrize("task", TASKS)
def test_model_card_matches_its_file(task: str) -> None:
    card = model_card(task)
    path = shipped_file(task)
    assert card["sha256"] == sha256_of(path)
    assert card["bytes"] == path.stat().st_size
    assert card["task"] == task and card["model"] == "luser-dw"
    assert card["parameters"] == PARAMS[task]
    for key in ("data", "command", "steps", "training_seconds", "machine", "torch"):
        assert card.get(key), key
    assert f"--task {task}" in card["command"]


def test_shipped_weights_fit_the_size_budget() -> None:
    total = sum(shipped_file(t).stat().st_size for t in TASKS)
    assert total <= 25 * 2**20


def _camera(size: int = 64) -> np.ndarray:
    import skimage.data
    from skimage.transform import resize

    cam = skimage.data.camera().astype(np.float64) / 255.0
    return resize(cam, (size, size), anti_aliasing=True).astype(np.float32)


def _scan(task: str, tmp: Path) -> tuple[Path, np.ndarray]:
    image = _camera()
    if task == "ct":  # LoDoPaB units: soft-tissue-like attenuation, not bone everywhere
        image = 0.5 * image
    src = tmp / f"{task}.npy"
    np.save(src, image)
    scan = tmp / f"{task}.h5"
    code, _, err = run_cli(["simulate", src, "--task", task, "-o", scan, "--seed", "0"])
    assert code == 0, err
    with h5py.File(scan) as f:
        gt = f["ground_truth"][0]
    if task.startswith("mri"):
        gt = np.linalg.norm(gt, axis=0, keepdims=True)
    return scan, gt


def _score(task: str, gt: np.ndarray, out: Path) -> float:
    pred = np.load(out)[0]
    pred = pred[None] if pred.ndim == 2 else pred
    return psnr(task, gt, pred, float(gt.max()) if task.startswith("mri") else None)


@pytest.mark.parametrize("task", TASKS)
def test_shipped_model_is_the_default_and_beats_the_simple_baseline(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/ here: the shipped model must be used
    scan, gt = _scan(task, tmp_path)
    code, _, err = run_cli(["reconstruct", scan, "-o", "model.npy", "--no-progress"])
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "shipped" in lines[0] and str(shipped_file(task)) in lines[0]
    code, _, err = run_cli(["reconstruct", scan, "-o", "base.npy", "-m", BASELINE[task]])
    assert code == 0, err
    model, base = _score(task, gt, tmp_path / "model.npy"), _score(task, gt, tmp_path / "base.npy")
    assert model > base + MARGIN[task], (model, base)


def _tiny_run(tmp: Path, task: str, name: str, extra: list[str] | None = None) -> Path:
    out = tmp / "runs" / name
    args = ["train", "--task", task, "--image-size", "16", "--steps", "1", "--batch-size", "2"]
    code, _, err = run_cli(
        [*args, "--val-size", "2", "--out", out, "--no-progress", *(extra or [])]
    )
    assert code == 0, err
    return out


def test_default_model_does_not_depend_on_local_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LUSER_RUNS", raising=False)
    run = _tiny_run(tmp_path, "mri4x", "local")
    assert resolve_model(None, "mri4x").path == shipped_file("mri4x")
    assert resolve_model("builtin", "mri4x").shipped
    latest = resolve_model("latest", "mri4x")
    assert latest.path.resolve() == run.resolve() and not latest.shipped
    scan, _ = _scan("mri4x", tmp_path)
    code, _, err = run_cli(["reconstruct", scan, "-o", "a.npy", "--checkpoint", "latest"])
    assert code == 0, err
    assert "newest local mri4x run (runs/local)" in err
    assert "trained at 16x16, applied at 64x64" in err


def test_checkpoint_latest_without_runs_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LUSER_RUNS", raising=False)
    scan, _ = _scan("deblur", tmp_path)
    code, _, err = run_cli(["reconstruct", scan, "-o", "a.png", "--checkpoint", "latest"])
    assert_clean_error(code, err, expect="no trained run for task deblur")
    assert not (tmp_path / "a.png").exists()


def test_train_init_builtin_starts_from_the_shipped_weights(tmp_path: Path) -> None:
    out = _tiny_run(tmp_path, "deblur", "ft", ["--init", "builtin", "--lr", "1e-12"])
    shipped = ckpt.load_checkpoint(shipped_file("deblur"))["model_state"]
    tuned = ckpt.load_checkpoint(out / ckpt.LAST)["model_state"]
    model = build_training_model(preset_for_task("deblur"), "luser-dw", step_scale=1.0)
    params = [k for k, _ in model.named_parameters()]  # buffers (power-iteration vectors) move
    moved = max(float((shipped[k] - tuned[k]).abs().max()) for k in params)
    assert moved < 1e-6  # one step at lr 1e-12: still the shipped weights, not a fresh init
    assert json.loads((out / "run.json").read_text())["init"].startswith("the shipped deblur")


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["--task", "deblur", "--model", "luser-sw", "--init", "builtin"],
            "holds a luser-dw model",
        ),
        (["--task", "ct", "--init", "MRI_RUN"], "trained for task 'mri4x', not 'ct'"),
        (["--task", "ct", "--init", "missing-run"], "no run folder or checkpoint"),
    ],
)
def test_train_init_refusals(args: list[str], reason: str, tmp_path: Path) -> None:
    mri = _tiny_run(tmp_path, "mri4x", "mri") if "MRI_RUN" in args else None
    args = [str(mri) if a == "MRI_RUN" else a for a in args]
    out = tmp_path / "refused"
    code, _, err = run_cli(
        ["train", *args, "--image-size", "16", "--steps", "1", "--batch-size", "2", "--out", out]
    )
    assert_clean_error(code, err, expect=reason)
    assert not (out / ckpt.LAST).exists()


def test_eval_builtin_reports_the_shipped_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "eval.json"
    code, _, err = run_cli(
        ["eval", "builtin", "--task", "deblur", "--n", "2", "--image-size", "32", "--json", res]
    )
    assert code == 0, err
    data = json.loads(res.read_text())
    assert data["checkpoint"] == str(shipped_file("deblur"))
    assert data["image_size"] == 32 and data["trained_image_size"] == 64
    assert {"model", "tv", "input"} <= set(data["metrics"])
    assert (tmp_path / "comparison_deblur_builtin_test.png").exists()  # not in the package
    assert not list(SHIPPED_DIR.glob("*.png"))


def test_eval_builtin_needs_a_task() -> None:
    code, _, err = run_cli(["eval", "builtin"])
    assert_clean_error(code, err, expect="needs --task")
