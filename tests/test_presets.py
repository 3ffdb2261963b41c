"""Shipped presets: one per task with the paper's settings, plus ``ct-paper`` (the paper's exact
CT recipe) next to ``ct`` (same physics, model, solver and budget; luser's start, data step,
loss and schedule). ``--preset`` takes a shipped preset's name as well as a file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from fixtures.cli import assert_clean_error, run_cli

from luser_cli.bench.settings import BenchSettings
from luser_cli.errors import ConfigError
from luser_cli.training.config import (
    Preset,
    apply_overrides,
    builtin_presets,
    load_preset,
    paper_preset_for_task,
    paper_preset_name,
    preset_for_task,
)

#: Image sizes of the paper's data sets (CelebA crops, LoDoPaB-CT, fastMRI knee).
PAPER_SIZES = {"deblur": 128, "ct": 362, "mri4x": 320, "mri8x": 320}

#: Where ct.toml departs from the paper (dotted keys), documented in the preset and the README.
CT_DEPARTURES = {
    "model.initial",
    "model.data_step",
    "model.deq4ip_data_step",
    "model.ray_weight_power",
    "train.loss",
    "train.lr",
    "train.model_lr.deq4ip",
    "train.scheduler",
}


def flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def test_every_task_has_a_preset_with_the_papers_size_and_stages() -> None:
    found = builtin_presets()
    assert set(found) == {*PAPER_SIZES, "ct-paper"}
    for task, size in PAPER_SIZES.items():
        p = preset_for_task(task)
        assert (p.task, p.image_size, p.model.stages) == (task, size, 8)


def test_ct_paper_is_the_papers_recipe_and_ct_departs_only_where_documented() -> None:
    paper, ours = load_preset("ct-paper"), preset_for_task("ct")
    assert paper.task == "ct"
    assert (paper.model.initial, paper.model.data_step, paper.train.loss) == (
        "auto",
        "gradient",
        "mse",
    )
    assert (ours.model.initial, ours.model.data_step, ours.train.loss) == ("fbp", "fbp", "psnr")
    assert (paper.model.ray_weight_power, ours.model.ray_weight_power) == (0.0, 0.5)
    a, b = flat(paper.model_dump(mode="json")), flat(ours.model_dump(mode="json"))
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == CT_DEPARTURES


def test_paper_preset_lookup() -> None:
    assert paper_preset_name("ct") == "ct-paper"
    assert paper_preset_name("mri4x") == "mri4x"
    assert paper_preset_for_task("ct").model.data_step == "gradient"
    assert paper_preset_for_task("deblur") == preset_for_task("deblur")


def test_bench_trains_the_papers_recipe() -> None:
    s = BenchSettings(tasks=("ct",), models=("luser-dw",), steps=2, image_size=16)
    p = s.preset("ct", "final")
    assert (p.model.initial, p.model.data_step, p.train.loss) == ("auto", "gradient", "mse")
    assert "--preset ct-paper" in s.train_command("ct", "luser-dw", "final")
    assert s.as_dict()["learning_rates"]["ct"] == load_preset("ct-paper").train.lr


def test_unknown_preset_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match=r"preset file not found: ct-fast .*ct-paper"):
        load_preset("ct-fast")


def test_presets_state_only_what_differs_from_the_code_defaults() -> None:
    """The paper's values are the code defaults; ct.toml extends ct-paper.toml."""
    for name, path in builtin_presets().items():
        stated = tomllib.loads(path.read_text(encoding="utf-8"))
        if name == "ct":
            assert stated["extends"] == "ct-paper"
            assert {f"{t}.{k}" for t in ("model", "train") for k in stated[t]} | {
                "train.model_lr.deq4ip"
            } == CT_DEPARTURES | {"train.model_lr"}
        else:
            assert set(stated) == {"task", "image_size"}, name
    assert load_preset("mri4x") == Preset(task="mri4x", image_size=320)


def test_a_preset_extends_another_and_overrides_it(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text('task = "ct"\nimage_size = 64\n[train]\nlr = 0.002\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[train]\nbatch_size = 2\n')
    p = load_preset(child)
    assert (p.task, p.image_size, p.train.lr, p.train.batch_size) == ("ct", 64, 2e-3, 2)
    shipped = tmp_path / "ours.toml"
    shipped.write_text('extends = "ct"\nimage_size = 32\n')
    assert load_preset(shipped).model.data_step == "fbp"
    (tmp_path / "base.toml").write_text('extends = "child.toml"\n')
    with pytest.raises(ConfigError, match="in a circle"):
        load_preset(child)
    child.write_text("extends = 3\n")
    with pytest.raises(ConfigError, match="extends must name a preset"):
        load_preset(child)
    child.write_text('extends = "nowhere.toml"\n')
    with pytest.raises(ConfigError, match="preset file not found: nowhere"):
        load_preset(child)


def test_presets_command_lists_and_prints_the_paper_recipe() -> None:
    code, out, err = run_cli(["presets"])
    assert code == 0, err
    assert "ct-paper" in out and "gradient" in out and "fbp" in out
    code, out, err = run_cli(["presets", "ct-paper"])
    assert code == 0, err
    assert 'data_step = "gradient"' in out and 'loss = "mse"' in out
    code, _, err = run_cli(["presets", "ct-fast"])
    assert_clean_error(code, err, expect="no preset 'ct-fast'")


@pytest.mark.usefixtures("one_thread")
def test_train_takes_a_shipped_preset_by_name(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--task", "ct", "--model", "lu-dncnn", "--preset", "ct-paper"]
    args += ["--image-size", "16", "--steps", "1", "--batch-size", "2", "--train-size", "2"]
    args += ["--val-size", "2", "--threads", "1", "--no-progress", "--out", str(run)]
    code, _, err = run_cli(args)
    assert code == 0, err
    stored = load_preset(run / "preset.toml")
    assert (stored.model.initial, stored.model.data_step, stored.train.loss) == (
        "auto",
        "gradient",
        "mse",
    )
    code, _, err = run_cli([*args[:5], "--preset", "mri4x", "--out", str(tmp_path / "r2")])
    assert_clean_error(code, err, expect="is for task 'mri4x', not 'ct'")


def test_model_lr_replaces_lr_for_that_model_only() -> None:
    ct = preset_for_task("ct")
    assert ct.train.model_lr == {"deq4ip": 1e-3}
    assert ct.for_model("deq4ip").train.lr == 1e-3
    assert ct.for_model("luser-dw") is ct and ct.train.lr == 3e-3
    assert ct.for_model("deq4ip").for_model("deq4ip") == ct.for_model("deq4ip")  # idempotent
    with pytest.raises(ConfigError, match="unknown model 'unet'"):
        apply_overrides(ct, {"train.model_lr": {"unet": 1e-3}})
    with pytest.raises(ConfigError, match="learning rate must be in"):
        apply_overrides(ct, {"train.model_lr": {"deq4ip": 2.0}})


def test_deq4ip_takes_its_own_data_step_from_the_ct_preset() -> None:
    """ct.toml keeps its FBP data step out of DEQ4IP (not contractive there, issue 20)."""
    ct = preset_for_task("ct")
    assert (ct.model.data_step, ct.model.deq4ip_data_step) == ("fbp", "gradient")
    assert ct.for_model("deq4ip").model.data_step == "gradient"
    assert ct.for_model("luser-dw").model.data_step == "fbp"
    paper = load_preset("ct-paper")
    assert paper.for_model("deq4ip").model.data_step == "gradient"  # nothing to replace


@pytest.mark.usefixtures("one_thread")
def test_an_explicit_data_step_applies_to_deq4ip_too(tmp_path: Path) -> None:
    base = ["train", "--task", "ct", "--model", "deq4ip", "--image-size", "16", "--steps", "1"]
    base += ["--batch-size", "2", "--train-size", "2", "--val-size", "2", "--threads", "1"]
    base += ["--fp-max-iter", "3", "--bwd-max-iter", "3", "--no-progress"]
    for extra, want in (([], "gradient"), (["--data-step", "fbp"], "fbp")):
        run = tmp_path / f"run{len(extra)}"
        code, _, err = run_cli([*base, *extra, "--out", str(run)])
        assert code == 0, err
        assert load_preset(run / "preset.toml").model.data_step == want


@pytest.mark.usefixtures("one_thread")
def test_train_uses_the_model_lr_unless_lr_is_given(tmp_path: Path) -> None:
    base = ["train", "--task", "ct", "--model", "deq4ip", "--image-size", "16", "--steps", "1"]
    base += ["--batch-size", "2", "--train-size", "2", "--val-size", "2", "--threads", "1"]
    base += ["--fp-max-iter", "3", "--bwd-max-iter", "3", "--no-progress"]
    for extra, want in (([], 1e-3), (["--lr", "0.002"], 2e-3)):
        run = tmp_path / f"run{len(extra)}"
        code, _, err = run_cli([*base, *extra, "--out", str(run)])
        assert code == 0, err
        stored = load_preset(run / "preset.toml")
        assert stored.train.lr == want
        assert stored.train.model_lr == ({} if extra else {"deq4ip": 1e-3})
