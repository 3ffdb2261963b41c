"""``luser bench``: a tiny full run through the CLI (JSON, Markdown, plot, reuse of finished
cells) and its error paths. Two steps at 16 px: this checks the plumbing, not the ranking."""

from __future__ import annotations

import json

import pytest
from fixtures.cli import assert_clean_error, run_cli

from luser_cli.bench.paper import paper_score
from luser_cli.bench.settings import DEFAULTS, QUICK
from luser_cli.bench.stats import training_stats

MODELS = ["lu-dncnn", "deq4ip", "luser-dw"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--task", "ct", "--model", *MODELS, "--steps", "2", "--image-size", "16"]
    args += ["--batch-size", "2", "--eval-images", "2", "--memprobe", "off", "--no-progress"]
    args += ["--threads", "1", "--out", out / "runs", "--json", out / "res.json"]
    code, _stdout, err = run_cli(args)
    assert code == 0, err
    return out, args, err


def test_outputs_hold_every_cell_and_the_facts_asked_for(bench_run):
    out, _, _ = bench_run
    doc = json.loads((out / "res.json").read_text())
    assert doc["complete"] is True
    assert doc["command"].startswith("luser bench") or "called from Python" in doc["command"]
    for key in ("cpu", "cores", "torch"):
        assert key in doc["machine"]
    assert doc["date"]
    cells = {c["model"]: c for c in doc["cells"]}
    assert sorted(cells) == sorted(MODELS)
    for name, c in cells.items():
        assert c["status"] == "ok", c.get("reason")
        assert c["parameters"] > 0
        assert c["train"]["steps"] == 2
        assert c["train"]["time_per_step_s"] > 0
        assert c["eval"]["n_images"] == 2
        assert len(c["eval"]["psnr_per_image"]) == 2
        assert c["eval"]["operator_applications_per_image"] > 0
        assert c["memory"]["peak_mb_batch1"] > 0
        assert c["memory"]["peak_mb_batch2"] > c["memory"]["peak_mb_batch1"]
        if name != "lu-dncnn":
            assert c["train"]["fp_forward_iters_mean"] >= 1
    # LU-DnCNN's 17-layer prox stores far more activations than LUSER's shallow block
    lu, lw = cells["lu-dncnn"]["memory"], cells["luser-dw"]["memory"]
    assert lu["per_sample_mb"] > lw["per_sample_mb"]
    f = doc["findings"]["ct/final"]["luser-dw"]
    assert f["vs_lu_dncnn"]["n"] == 2
    assert f["operator_applications_ratio_deq4ip_over_this"] is not None
    assert doc["classical"]["ct"]["method"] in {"fbp", "tv", "adjoint"}


def test_markdown_has_both_tables_and_the_paper_numbers(bench_run):
    out, _, _ = bench_run
    md = (out / "res.md").read_text()
    assert "Table 2 shape" in md and "Table 4 shape" in md
    psnr, _ = paper_score("ct", "luser-dw", "final")
    assert f"{psnr:.2f}" in md
    assert "luser bench" in md
    png = (out / "res.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_finished_cells(bench_run):
    _out, args, _ = bench_run
    code, _, err = run_cli(args)
    assert code == 0, err
    assert err.count("reused") == len(MODELS)


def test_training_stats_skip_the_first_step(tmp_path):
    rows = [
        {"step": 1, "loss": 1.0, "psnr": 10.0, "time_s": 9.0},
        {"step": 2, "loss": 0.5, "psnr": 12.0, "time_s": 1.0},
        {"step": 3, "loss": 0.25, "psnr": 14.0, "time_s": 3.0},
        {"split": "val", "step": 3, "val_psnr": 13.0, "val_ssim": 0.5},
    ]
    p = tmp_path / "metrics.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    s = training_stats(p)
    assert s["time_per_step_s"] == pytest.approx(2.0)
    assert s["time_first_step_s"] == 9.0
    assert s["val_psnr"] == 13.0


def test_quick_and_full_defaults_cover_what_the_issue_asks():
    assert set(DEFAULTS.tasks) == {"deblur", "ct", "mri4x", "mri8x"}
    assert len(DEFAULTS.models) == 4
    assert QUICK.steps < DEFAULTS.steps


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--task", "pet"], "pet"),
        (["--model", "unet"], "unet"),
        (["--steps", "0"], "--steps"),
        (["--memprobe", "maybe"], "--memprobe"),
        (["nonsense"], "nonsense"),
    ],
)
def test_bad_requests_are_one_line_errors(tmp_path, extra, expect):
    code, _, err = run_cli(["bench", "--out", tmp_path / "r", "--no-progress", *extra])
    assert_clean_error(code, err, expect=expect)
    assert not (tmp_path / "r" / "bench.json").exists()


def test_real_step_builds_deq4ip_as_training_does():
    """The memory column's real step resolves the preset for the model (Preset.for_model)."""
    from luser_cli.bench.memory import build_real_step
    from luser_cli.memprobe.presets import probe_preset

    model, _, _ = build_real_step(probe_preset("ct", 16, None, "shipped"), "deq4ip", 1)
    assert (model.norm, model.anchor) == ("fixed", 0.01)
    assert model.data_step == "gradient"  # ct.toml keeps its FBP step out of DEQ4IP
