"""Hostile and mismatched checkpoints (issue 7): checkpoints are data.

A pickle that would run code (here: create a marker file) is refused by ``weights_only`` loading
wherever a checkpoint is read (``luser eval``, ``luser reconstruct --checkpoint``,
``luser train --resume``) with one line, and the marker never appears. Truncated, random,
empty and foreign files, luser checkpoints with hostile contents, and checkpoints for another
task, model, image size or channel count are each refused with a one-line reason.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.cli import assert_clean_error, run_cli
from fixtures.files import make_npy

from luser_cli.errors import CheckpointError
from luser_cli.runs import load_trained
from luser_cli.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16
TRAIN = ["train", "--task", "mri4x", "--model", "luser-dw", "--threads", "1", "--no-progress"]
TINY = ["--image-size", str(SIZE), "--steps", "1", "--batch-size", "2"]
TINY += ["--train-size", "4", "--val-size", "2", "--fp-max-iter", "3", "--bwd-max-iter", "3"]


class RunsCode:
    """Unpickling this calls ``os.system`` (were it allowed)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-step mri4x run at 16x16."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("ckpt") / "run"
    code, _, err = run_cli([*TRAIN, *TINY, "--out", out])
    torch.set_num_threads(before)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Measurement files: mri4x at the run's size and at another size, and ct."""
    d = tmp_path_factory.mktemp("scans")
    out = {}
    for name, task, size in (("mri", "mri4x", SIZE), ("mri24", "mri4x", 24), ("ct", "ct", SIZE)):
        img = np.random.default_rng(0).random((1, size, size)).astype(np.float32)
        make_npy(d / f"{name}.npy", img)
        code, _, err = run_cli(["simulate", d / f"{name}.npy", "-t", task, "-o", d / f"{name}.h5"])
        assert code == 0, err
        out[name] = d / f"{name}.h5"
    return out


def _evil_zip(p: Path, marker: Path, _good: Path) -> None:
    torch.save({"format": ckpt.FORMAT, "model_state": RunsCode(marker)}, p)


def _evil_raw(p: Path, marker: Path, _good: Path) -> None:
    p.write_bytes(pickle.dumps({"format": ckpt.FORMAT, "x": RunsCode(marker)}))


def _evil_raw2(p: Path, marker: Path, _good: Path) -> None:
    p.write_bytes(pickle.dumps({"format": ckpt.FORMAT, "x": RunsCode(marker)}, protocol=2))


HOSTILE: dict[str, tuple[Callable[[Path, Path, Path], None], str]] = {
    "pickle-code-zip": (_evil_zip, "refused: it holds posix.system"),
    "pickle-code-raw": (_evil_raw, "not a pytorch checkpoint"),  # protocol 5: refused earlier
    "pickle-code-raw2": (_evil_raw2, "refused: it holds posix.system"),
    "truncated": (
        lambda p, _m, good: p.write_bytes(good.read_bytes()[:5000]),
        "corrupt, truncated",
    ),
    "random-bytes": (lambda p, _m, _g: p.write_bytes(os.urandom(3000)), "corrupt, truncated"),
    "empty": (lambda p, _m, _g: p.write_bytes(b""), "empty file"),
    "text": (lambda p, _m, _g: p.write_text("hello\n"), "corrupt, truncated"),
    "a-tensor": (lambda p, _m, _g: torch.save(torch.zeros(3), p), "not a luser checkpoint"),
    "foreign-dict": (
        lambda p, _m, _g: torch.save({"state_dict": {"w": torch.zeros(2)}}, p),
        "not a luser checkpoint",
    ),
}


def hostile_file(kind: str, d: Path, good: Path) -> tuple[Path, Path, str]:
    """(checkpoint file, marker that must never appear, expected phrase)."""
    make, phrase = HOSTILE[kind]
    marker = d / "PWNED"
    p = d / f"{kind}.pt"
    make(p, marker, good)
    return p, marker, phrase


def test_checkpoints_are_only_loaded_with_weights_only() -> None:
    pattern = re.compile(r"torch\.load\(")
    offenders = []
    for path in (ROOT / "luser_cli").rglob("*.py"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_file_is_refused_in_one_line(kind: str, run: Path, tmp_path: Path) -> None:
    p, marker, phrase = hostile_file(kind, tmp_path, run / ckpt.LAST)
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and phrase in msg.lower(), msg
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle-code-zip", "pickle-code-raw", "truncated", "a-tensor"])
def test_eval_refuses_a_hostile_checkpoint(kind: str, run: Path, tmp_path: Path) -> None:
    p, marker, phrase = hostile_file(kind, tmp_path, run / ckpt.LAST)
    code, out, err = run_cli(["eval", p, "--n", "1", "--threads", "1"])
    assert_clean_error(code, err, expect=phrase)
    assert not marker.exists() and out == ""


def test_eval_refuses_a_run_folder_whose_best_checkpoint_runs_code(
    run: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    p, marker, phrase = hostile_file("pickle-code-zip", tmp_path, run / ckpt.LAST)
    shutil.copyfile(p, folder / ckpt.BEST)
    code, _, err = run_cli(["eval", folder, "--n", "1", "--threads", "1"])
    assert_clean_error(code, err, expect=phrase)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle-code-zip", "random-bytes", "foreign-dict"])
def test_reconstruct_refuses_a_hostile_checkpoint(
    kind: str, run: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    p, marker, phrase = hostile_file(kind, tmp_path, run / ckpt.LAST)
    out = tmp_path / "out.png"
    code, _, err = run_cli(["reconstruct", scans["mri"], "-o", out, "--checkpoint", p])
    assert_clean_error(code, err, expect=phrase)
    assert not marker.exists() and not out.exists()


def test_reconstruct_with_the_good_checkpoint_works(
    run: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    code, _, err = run_cli(["reconstruct", scans["mri"], "-o", out, "--checkpoint", run])
    assert code == 0, err
    assert out.exists()


@pytest.mark.parametrize(
    ("scan", "reason"),
    [("ct", "trained for task 'mri4x', not 'ct'")],
)
def test_reconstruct_refuses_a_checkpoint_for_another_task(
    scan: str, reason: str, run: Path, scans: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    code, _, err = run_cli(["reconstruct", scans[scan], "-o", out, "--checkpoint", run])
    assert_clean_error(code, err, expect=reason)
    assert not out.exists()


def test_check_compatible_names_each_mismatch(run: Path) -> None:
    data = ckpt.load_checkpoint(run / ckpt.LAST)
    ckpt.check_compatible(data, task="mri4x", image_size=SIZE, channels=2, model="luser-dw")
    cases = {
        "trained for task 'mri4x', not 'deblur'": {"task": "deblur"},
        "expects 2-channel images, the data have 3": {"task": "mri4x", "channels": 3},
        "trained on 16x16 images, not 32x32": {"task": "mri4x", "image_size": 32},
        "holds a luser-dw model, not deq4ip": {"task": "mri4x", "model": "deq4ip"},
    }
    for reason, kwargs in cases.items():
        with pytest.raises(CheckpointError, match=re.escape(reason)):
            ckpt.check_compatible(data, **kwargs)


def _edited(run: Path, d: Path, edit: Callable[[dict], None]) -> Path:
    data = torch.load(run / ckpt.LAST, weights_only=True)
    edit(data)
    p = d / "edited.pt"
    torch.save(data, p)
    return p


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda data: data.__setitem__(key, value)


def _first_weight(value: Callable[[torch.Tensor], object]) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        state = data["model_state"]
        key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
        state[key] = value(state[key])

    return edit


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_first_weight(lambda w: torch.full_like(w, float("nan"))), "not finite"),
        (_first_weight(lambda w: w[:1]), "weights do not fit a luser-dw model"),
        (_first_weight(lambda w: "weights"), "other than named tensors"),
        (_set("step", -3), "'step' is negative"),
        (_set("step", True), "field 'step' missing or not int"),
        (_set("task", None), "field 'task' missing"),
        (_set("version", 99), "version 99 unsupported"),
        (_set("model", "resnet"), "unknown model"),
        (lambda data: data["preset"].__setitem__("image_size", 99999), "image_size"),
    ],
)
def test_luser_checkpoint_with_hostile_contents_is_refused(
    edit: Callable[[dict], None], reason: str, run: Path, tmp_path: Path
) -> None:
    p = _edited(run, tmp_path, edit)
    code, _, err = run_cli(["eval", p, "--n", "1", "--threads", "1"])
    assert_clean_error(code, err, expect=reason)


def test_load_trained_refuses_other_than_a_file_or_run(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no run folder or checkpoint"):
        load_trained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_trained(tmp_path)


# -- --resume ------------------------------------------------------------------------------------
def copy_run(run: Path, d: Path) -> Path:
    shutil.copytree(run, d / "run")
    return d / "run"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--model", "luser-sw"], "holds a luser-dw model, not luser-sw"),
        (["--task", "ct"], "trained for task 'mri4x', not 'ct'"),
        (["--image-size", "24"], "trained on 16x16 images, not 24x24"),
    ],
)
def test_resume_refuses_a_run_of_another_model_task_or_size(
    args: list[str], reason: str, run: Path, tmp_path: Path
) -> None:
    folder = copy_run(run, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    base = [a for a in TRAIN if a not in ("--task", "mri4x", "--model", "luser-dw")]
    task = args[1] if args[0] == "--task" else "mri4x"
    model = args[1] if args[0] == "--model" else "luser-dw"
    extra = args if args[0] == "--image-size" else []
    cmd = [*base, "--task", task, "--model", model, *extra, "--out", folder, "--resume"]
    code, _, err = run_cli(cmd)
    assert_clean_error(code, err, expect=reason)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_resume_over_a_checkpoint_that_runs_code(run: Path, tmp_path: Path) -> None:
    """Only code-running files: one-line error. With a good previous checkpoint: a warning
    and the run continues from it. The code runs in neither case."""
    folder = copy_run(run, tmp_path)
    marker = tmp_path / "PWNED"
    shutil.copyfile(folder / ckpt.LAST, tmp_path / "good.pt")
    _evil_zip(folder / ckpt.LAST, marker, folder)
    code, _, err = run_cli([*TRAIN, "--out", folder, "--resume"])
    assert_clean_error(code, err, expect="refused: it holds posix.system")
    assert "no usable checkpoint" in err and not marker.exists()

    shutil.copyfile(tmp_path / "good.pt", folder / ckpt.PREV)
    code, _, err = run_cli([*TRAIN, "--out", folder, "--resume", "--steps", "2"])
    assert code == 0, err
    assert err.startswith("warning: ") and "refused: it holds posix.system" in err
    assert "resumed" in err and not marker.exists()
    assert ckpt.load_checkpoint(folder / ckpt.LAST)["step"] == 2


def test_resume_with_a_corrupt_optimizer_state_is_refused(run: Path, tmp_path: Path) -> None:
    folder = copy_run(run, tmp_path)
    p = _edited(run, tmp_path, _set("optimizer_state", {"state": {}, "param_groups": []}))
    shutil.copyfile(p, folder / ckpt.LAST)
    code, _, err = run_cli([*TRAIN, "--out", folder, "--resume"])
    assert_clean_error(code, err, expect="its state does not fit this luser-dw run")


def test_a_new_run_never_overwrites_an_old_one(run: Path, tmp_path: Path) -> None:
    folder = copy_run(run, tmp_path)
    code, _, err = run_cli([*TRAIN, *TINY, "--out", folder])
    assert_clean_error(code, err, expect="already holds a run; pass --resume")
