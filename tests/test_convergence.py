"""Issue 20: trustworthy gradients and visible equilibria.

The share of training steps whose backward solve converged (metrics, progress bar, eval, bench,
warning), the Jacobian spectral-radius probe, DEQ4IP's contractive form (and the original kept
for old checkpoints), Anderson's Tikhonov scaling and the convolutions' operator norms.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures.cli import run_cli

from luser_cli.models.deq4ip import DEQ4IP
from luser_cli.models.dncnn import DnCNN
from luser_cli.models.registry import build_model
from luser_cli.models.spectral_norm import conv_operator_norm, lipschitz_bound, sn_conv
from luser_cli.solvers import EquilibriumConfig, SolverConfig, anderson, equilibrium, picard
from luser_cli.solvers.jacobian import jacobian_spectral_radius
from luser_cli.training.config import DEQ4IP_ANCHOR, load_preset, preset_from_dict
from luser_cli.training.convergence import (
    backward_convergence,
    convergence_warning,
    step_backward_converged,
)
from luser_cli.training.loop import solver_summary
from luser_cli.training.progress import TrainingProgress
from luser_cli.training.step import build_training_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _symmetric(n: int, rho: float, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    ev = torch.linspace(-0.5 * rho, rho, n, dtype=torch.float64)
    return (q * ev) @ q.T


# -- the Jacobian probe ------------------------------------------------------------------------
def test_spectral_radius_of_linear_maps_per_sample(gen):
    m = _symmetric(40, 0.8, gen)
    scale = torch.tensor([1.0, 0.25], dtype=torch.float64)  # sample 1's map is 4x smaller

    def f(z):
        return (z @ m.T) * scale.view(2, 1) + 1.0

    z = torch.randn(2, 40, dtype=torch.float64, generator=gen)
    rho = jacobian_spectral_radius(f, z, iterations=60, generator=gen)
    assert rho.shape == (2,)
    assert rho[0] == pytest.approx(0.8, rel=0.03)
    assert rho[1] == pytest.approx(0.2, rel=0.03)


def test_equilibrium_records_probe_only_when_asked(gen):
    m = _symmetric(12, 0.5, gen).float()

    def step(z, u):
        return torch.tanh(z @ m.T + u)

    u = torch.randn(3, 12, generator=gen)
    cfg = EquilibriumConfig(forward=SolverConfig(tol=1e-6, max_iter=80))
    _, plain = equilibrium(step, lambda x: x, (u,), [], torch.zeros(3, 12), cfg)
    assert "jacobian_spectral_radius" not in plain
    z, probed = equilibrium(step, lambda x: x, (u,), [], torch.zeros(3, 12), cfg, probe=30)
    rho = probed["jacobian_spectral_radius"]
    assert rho.shape == (3,) and bool((rho > 0).all()) and bool((rho <= 0.5 + 1e-3).all())
    # the probed point is the fixed point: the same z whether probed or not
    z_plain, _ = equilibrium(step, lambda x: x, (u,), [], torch.zeros(3, 12), cfg)
    assert torch.equal(z, z_plain)


# -- converged backward solves: metrics, progress, warning ------------------------------------
def _rec(flags: list[bool]) -> dict:
    return {"backward_converged": torch.tensor(flags), "backward_iterations": torch.ones(2)}


def test_step_and_run_convergence_summaries():
    assert step_backward_converged([{"forward_iterations": torch.ones(2)}]) is None
    assert step_backward_converged([_rec([True, True]), _rec([True, False])]) == 0.75
    out = solver_summary([_rec([True, True])], tol=1e-3)
    assert out["fp_backward_converged"] == 1.0
    rows = [
        {"step": 1, "fp_backward_converged": 1.0},
        {"step": 2, "fp_backward_converged": 0.5},
        {"step": 2, "split": "val", "val_psnr": 20.0},
        {"step": 3, "fp_backward_converged": 0.0},
        {"event": "rollback", "fp_backward_converged": 1.0},
    ]
    s = backward_convergence(rows)
    assert s == {
        "steps": 3,
        "converged_steps": 1,
        "converged_step_fraction": pytest.approx(1 / 3),
        "converged_solve_fraction": pytest.approx(0.5),
    }
    line = convergence_warning(s)
    assert line is not None and line.startswith("warning:") and "\n" not in line
    assert "33%" in line and "(1/3)" in line
    assert convergence_warning({**s, "converged_step_fraction": 0.5}) is None
    assert backward_convergence([{"step": 1, "loss": 1.0}]) is None


def test_progress_bar_counts_converged_steps():
    bar = TrainingProgress(4, enabled=False)
    for ok in (1.0, 0.5, 1.0):
        bar.update(1, 0.1, 20.0, {"fp_forward_iters": 3.0, "fp_backward_converged": ok}, 0)
    assert bar.backward == {"steps": 3, "converged_steps": 2}


# -- DEQ4IP: the contractive form, and the original for old checkpoints -------------------------
def test_old_presets_build_the_original_deq4ip_new_runs_the_contractive_one():
    ct = load_preset("ct-paper")
    assert ct.model.deq4ip_norm is None and ct.model.deq4ip_anchor is None
    old = build_training_model(ct, "deq4ip", step_scale=1.0)
    assert old.norm == "batch" and old.anchor == 0.0  # a checkpoint's stored preset: unchanged
    new = ct.for_model("deq4ip")
    assert new.model.deq4ip_norm == "fixed" and new.model.deq4ip_anchor == DEQ4IP_ANCHOR
    assert ct.for_model("luser-dw").model == ct.model  # LUSER untouched
    # what a run stores round-trips
    again = preset_from_dict(new.model_dump(mode="json"))
    assert again.model.deq4ip_norm == "fixed"
    model = build_training_model(again, "deq4ip", step_scale=1.0)
    assert model.norm == "fixed" and model.anchor == DEQ4IP_ANCHOR
    # same parameters and state keys as the original (checkpoints of both load either way)
    assert model.state_dict().keys() == old.state_dict().keys()


def _ct_batch(size: int = 16, n: int = 2):
    from luser_cli.data.sources import open_dataset
    from luser_cli.training.batches import BatchMaker
    from luser_cli.training.config import apply_overrides

    preset = apply_overrides(load_preset("ct-paper"), {"image_size": size})
    maker = BatchMaker.for_preset(preset, torch.device("cpu"))
    ds = open_dataset("ct", "val", size, None, 0, size=n)
    x = torch.stack([ds[i][0] for i in range(n)])
    meta = {k: torch.as_tensor([ds[i][1][k] for i in range(n)]) for k in ds[0][1]}
    return preset, maker, maker.make(x, meta, -1, 0)


def test_fixed_norm_deq4ip_converges_in_training_and_keeps_its_statistics():
    preset, maker, batch = _ct_batch()
    torch.manual_seed(0)
    model = build_model(
        "deq4ip",
        "ct",
        step_scale=1.0 / maker.norm_sq(),
        equilibrium=preset.solver,
        deq4ip_norm="fixed",
        deq4ip_anchor=0.1,
    ).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)  # fixed affine maps, also in training
    before = [bn.running_var.clone() for bn in bns]
    out = model(batch.y, batch.op, batch.x0)
    ((out - batch.x) ** 2).mean().backward()
    (rec,) = model.records
    assert bool(rec["forward_converged"].all()) and bool(rec["backward_converged"].all())
    assert all(torch.equal(b, bn.running_var) for b, bn in zip(before, bns, strict=True))
    # per-sample map: one image's reconstruction does not depend on its batch mates
    model.eval()
    with torch.no_grad():
        both = model(batch.y, batch.op, batch.x0)
        first = model(batch.y[:1], batch.op, batch.x0[:1])
    assert torch.allclose(both[:1], first, atol=1e-4)


def test_original_deq4ip_is_expansive_in_training():
    """The finding behind the change (measured: rho 2.2-2.3 at CT 32 px): batch statistics."""
    preset, maker, batch = _ct_batch()
    torch.manual_seed(0)
    model = build_model(
        "deq4ip", "ct", step_scale=1.0 / maker.norm_sq(), equilibrium=preset.solver
    ).train()
    out = model(batch.y, batch.op, batch.x0)
    ((out - batch.x) ** 2).mean().backward()
    (rec,) = model.records
    assert not bool(rec["backward_converged"].any())


def test_anchor_clamps_the_step_and_validates():
    with pytest.raises(ValueError):
        DEQ4IP(channels=1, step_scale=1.0, equilibrium=EquilibriumConfig(), anchor=1.0)
    with pytest.raises(ValueError):
        DEQ4IP(channels=1, step_scale=1.0, equilibrium=EquilibriumConfig(), norm="group")


# -- Anderson's Tikhonov term --------------------------------------------------------------------
def test_latest_scaled_tikhonov_costs_no_more_than_picard(gen):
    m = _symmetric(300, 0.05, gen)
    b = torch.randn(4, 300, dtype=torch.float64, generator=gen)

    def f(z):
        return z @ m.T + b

    z0 = torch.zeros(4, 300, dtype=torch.float64)
    base = {"tol": 1e-8, "max_iter": 60}
    latest = SolverConfig(regularization_scale="latest", **base)
    its = {
        "picard": picard(f, z0, SolverConfig(method="picard", **base))[1].iterations,
        "mean": anderson(f, z0, SolverConfig(**base))[1].iterations,
        "latest": anderson(f, z0, latest)[1].iterations,
    }
    assert int(its["latest"].max()) <= int(its["picard"].min())
    assert int(its["mean"].max()) > int(its["picard"].min())  # the finding it fixes
    z, stats = anderson(f, z0, SolverConfig(regularization_scale="latest", **base))
    assert bool(stats.converged.all())
    assert torch.allclose(z, f(z), atol=1e-6)


def test_latest_scaled_tikhonov_survives_a_constant_map():
    z, _ = anderson(
        lambda z: torch.ones_like(z),
        torch.zeros(2, 5),
        SolverConfig(regularization_scale="latest", tol=0.0, max_iter=8),
    )
    assert torch.isfinite(z).all() and torch.allclose(z, torch.ones(2, 5))


# -- spectral normalisation vs the convolution's operator norm ------------------------------------
def test_conv_operator_norm_matches_the_dense_matrix():
    torch.manual_seed(0)
    conv = sn_conv(3, 5)
    n = 8
    eye = torch.eye(3 * n * n, dtype=torch.float64).reshape(-1, 3, n, n)
    with torch.no_grad():
        dense = torch.nn.functional.conv2d(eye, conv.weight.double(), None, 1, 1)
    sigma = float(torch.linalg.matrix_norm(dense.reshape(3 * n * n, -1), 2))
    assert conv_operator_norm(conv, n, iterations=300) == pytest.approx(sigma, rel=1e-4)
    # spectral normalisation bounds the reshaped kernel, not the convolution
    reshaped = float(torch.linalg.matrix_norm(conv.weight.detach().flatten(1).double(), 2))
    assert reshaped == pytest.approx(1.0, abs=0.05) and sigma > 1.1


def test_lipschitz_bound_of_a_spectrally_normalised_dncnn_is_far_above_one():
    torch.manual_seed(0)
    net = DnCNN(1, spectral_norm=True).eval()
    out = lipschitz_bound(net, 16, iterations=30)
    assert out["convolutions"] == 17
    assert out["bound"] > 10 * out["reshaped_kernel_product"]


# -- the CLI: train -> metrics / eval / info ---------------------------------------------------
TINY = ["--steps", "2", "--batch-size", "2", "--val-size", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def deq_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "deq"
    args = ["train", "--task", "ct", "--model", "deq4ip", "--preset", "ct-paper"]
    code, _, err = run_cli([*args, "--image-size", "16", "--out", out, *TINY])
    assert code == 0, err
    return out


def test_train_records_backward_convergence(deq_run: Path):
    rows = [json.loads(line) for line in (deq_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["fp_backward_converged"] for r in steps] == [1.0, 1.0]
    summary = json.loads((deq_run / "run.json").read_text())
    assert summary["fp_backward_converged_steps"]["converged_step_fraction"] == 1.0
    stored = (deq_run / "preset.toml").read_text()
    assert 'deq4ip_norm = "fixed"' in stored


def test_eval_and_info_show_equilibria_and_training_convergence(deq_run: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    code, stdout, err = run_cli(
        ["eval", deq_run, "--n", "2", "--json", out, "--threads", "1", "--methods", "fbp"]
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["training_backward_convergence"]["steps"] == 2
    (stage,) = result["equilibria"]["stages"]
    assert 0 < stage["jacobian_spectral_radius"] < 1
    assert stage["forward_iterations"] >= 1 and stage["backward_iterations"] >= 1
    assert "training steps whose backward solve converged: 100% (2/2)" in stdout
    assert "stage 0: rho" in stdout and "warning" not in err

    code, stdout, err = run_cli(["info", "--checkpoint", deq_run, "--json"])
    assert code == 0, err
    info = json.loads(stdout)
    assert info["model"] == "deq4ip" and info["equilibria"]["stages"][0]["stage"] == 0
    assert "fixed" in info["batchnorm_in_fixed_point"]
    code, stdout, err = run_cli(["info", "--checkpoint", deq_run])
    assert code == 0, err
    assert "stage 0: rho" in stdout and "converged: 100%" in stdout


def test_warning_when_most_backward_solves_fail(tmp_path: Path):
    """The original DEQ4IP (batch statistics) with a 3-iteration backward budget."""
    preset = tmp_path / "p.toml"
    preset.write_text('extends = "ct-paper"\n[model]\ndeq4ip_norm = "batch"\n')
    out = tmp_path / "run"
    args = ["train", "--task", "ct", "--model", "deq4ip", "--preset", preset, "--out", out]
    code, _, err = run_cli([*args, "--image-size", "16", "--bwd-max-iter", "3", *TINY])
    assert code == 0, err
    lines = [line for line in err.splitlines() if "backward solve converged on only" in line]
    assert len(lines) == 1 and lines[0].startswith("warning:")
    code, _, err = run_cli(["info", "--checkpoint", out])
    assert code == 0 and "converged on only 0%" in err
