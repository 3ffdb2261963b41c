"""Models: exact parameter counts, weight sharing, gradients, solver records, training."""

from __future__ import annotations

import math

import pytest
import torch

from luser_cli.models.data_steps import (
    FBPStep,
    GradientStep,
    build_data_step,
    count_weights,
    data_step_from_physics,
)
from luser_cli.models.dncnn import DnCNN
from luser_cli.models.registry import MODEL_NAMES, build_model, count_parameters
from luser_cli.models.shallow_block import ShallowEquilibriumBlock
from luser_cli.models.spectral_norm import power_iteration_
from luser_cli.models.unrolled import LoopUnrolled
from luser_cli.physics import build_noise, build_operator, initial_estimate, simulate
from luser_cli.solvers.config import EquilibriumConfig, SolverConfig
from luser_cli.solvers.equilibrium import equilibrium

# DESIGN.md section 1: trainable parameters incl. the one step size.
EXPECTED = {
    "ct": {"lu-dncnn": 556_033, "deq4ip": 556_033, "luser-sw": 93_954, "luser-dw": 751_625},
    "mri4x": {"lu-dncnn": 557_185, "deq4ip": 557_185, "luser-sw": 95_107, "luser-dw": 760_849},
    "mri8x": {"lu-dncnn": 557_185, "deq4ip": 557_185, "luser-sw": 95_107, "luser-dw": 760_849},
    "deblur": {"lu-dncnn": 558_337, "deq4ip": 558_337, "luser-sw": 96_260, "luser-dw": 770_073},
}


@pytest.mark.parametrize("task", list(EXPECTED))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_match_design(task: str, name: str) -> None:
    assert count_parameters(build_model(name, task, step_scale=1.0)) == EXPECTED[task][name]


def test_sw_shares_one_block_dw_has_eight() -> None:
    sw = build_model("luser-sw", "ct", step_scale=1.0)
    dw = build_model("luser-dw", "ct", step_scale=1.0)
    assert isinstance(sw, LoopUnrolled) and isinstance(dw, LoopUnrolled)
    assert len(sw.prox) == 1 and sw.shared_weights()
    assert len(dw.prox) == 8 and not dw.shared_weights()
    # Eight independent initialisations, not eight references to one block.
    w = [b.mix[0].parametrizations.weight.original for b in dw.prox]
    assert len({id(t) for t in w}) == 8
    assert not torch.equal(w[0], w[1])


def test_spectral_norm_normalises_and_only_moves_on_request() -> None:
    torch.manual_seed(0)
    block = ShallowEquilibriumBlock(1)
    conv = block.mix[0]
    power_iteration_(block, 50)
    w = conv.weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(w, ord=2) == pytest.approx(1.0, rel=1e-3)
    u = conv.parametrizations.weight[0].u.clone()
    for _ in range(3):  # reading the weight does not advance the power iteration
        _ = conv.weight
    assert torch.equal(u, conv.parametrizations.weight[0].u)


def _problem(task: str, size: int = 16, batch: int = 2, dtype=torch.float32):
    torch.manual_seed(0)
    from luser_cli.data.phantoms import random_ellipses

    op = build_operator(task, size).to(dtype)
    c = op.image_shape[0]
    x = torch.stack([torch.from_numpy(random_ellipses(size, s)) for s in range(batch)])[:, None]
    x = x.repeat(1, c, 1, 1).to(dtype)
    if task.startswith("mri"):
        x[:, 1] = 0
    y = simulate(op, build_noise(task), x, torch.Generator().manual_seed(0))
    return op, x, y, initial_estimate(task, op, y)


def test_tiny_lu_dncnn_gradcheck_end_to_end() -> None:
    """float64 gradcheck through a whole (tiny) unrolled network: input and step size."""
    from torch.func import functional_call

    op, _, y, x0 = _problem("deblur", size=6, batch=1, dtype=torch.float64)
    torch.manual_seed(0)
    model = LoopUnrolled(
        name="lu-dncnn",
        prox=[DnCNN(3, features=4, depth=3)],
        stages=2,
        step_scale=1.0 / op.norm_sq(),
    )
    model = model.double().eval()
    x_init = x0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda xi: model(y, op, xi), (x_init,), eps=1e-6, atol=1e-5)
    step = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s: functional_call(model, {"step": s}, (y, op, x0)), (step,), eps=1e-6, atol=1e-5
    )


def test_implicit_gradient_of_shallow_block_matches_unrolled_backprop() -> None:
    torch.manual_seed(0)
    block = ShallowEquilibriumBlock(1).double()
    with torch.no_grad():  # a Jacobian far from 0 (still contractive), so JFB is visibly off
        block.mix[4].weight.fill_(0.1)
    d = (torch.rand(2, 1, 12, 12, dtype=torch.float64) * 0.5).requires_grad_()
    tight = SolverConfig(max_iter=200, tol=1e-12)
    cfg = EquilibriumConfig(forward=tight, backward=tight)
    params = list(block.parameters())
    target = torch.rand_like(d)

    r, _ = equilibrium(block.step, block.injection, (d,), params, torch.zeros_like(d), cfg)
    loss = ((d + r - target) ** 2).sum()
    implicit = torch.autograd.grad(loss, [d, *params])

    u = block.injection(d)
    z = torch.zeros_like(d)
    for _ in range(150):  # contractive at initialisation: plain iteration converges
        z = block.step(z, u)
    loss_unrolled = ((d + z - target) ** 2).sum()
    unrolled = torch.autograd.grad(loss_unrolled, [d, *params])

    a = torch.cat([g.flatten() for g in implicit])
    b = torch.cat([g.flatten() for g in unrolled])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
    assert cos >= 0.999
    assert (a - b).norm() / b.norm() <= 1e-3

    jfb_cfg = EquilibriumConfig(forward=tight, backward=tight, backward_mode="jfb")
    r_jfb, _ = equilibrium(block.step, block.injection, (d,), params, torch.zeros_like(d), jfb_cfg)
    jfb = torch.autograd.grad(((d + r_jfb - target) ** 2).sum(), [d, *params])
    c = torch.cat([g.flatten() for g in jfb])
    assert (c - b).norm() / b.norm() > 1e-3  # JFB is an approximation, and measurably so


@pytest.mark.parametrize("name", ["luser-sw", "luser-dw", "deq4ip"])
def test_records_report_iterations_residuals_and_backward(name: str) -> None:
    op, x, y, x0 = _problem("mri4x")
    cfg = EquilibriumConfig(forward=SolverConfig(max_iter=15), backward=SolverConfig(max_iter=15))
    model = build_model(name, "mri4x", step_scale=1.0, equilibrium=cfg)
    model.train()
    op.reset_counters()
    out = model(y, op, x0)
    stages = 1 if name == "deq4ip" else 8
    assert len(model.records) == stages
    assert [rec["stage"] for rec in model.records] == list(range(stages))
    assert not any("jacobian_spectral_radius" in rec for rec in model.records)
    for rec in model.records:
        assert rec["forward_iterations"].shape == (2,)
        assert bool((rec["forward_iterations"] >= 1).all())
        assert bool((rec["forward_iterations"] <= 15).all())
        assert rec["forward_residual"].shape == (2,)
    if name == "deq4ip":  # one A and A^T per iteration (+ the BatchNorm statistics update)
        iters = int(model.records[0]["forward_iterations"].max())
        assert op.calls_A >= iters
    else:
        assert op.calls_A == 8 and op.calls_A_adjoint == 8
    ((out - x) ** 2).mean().backward()
    for rec in model.records:
        assert rec["backward_iterations"].shape == (2,)
        assert "backward_residual" in rec
    model.jacobian_probe = 2  # reaches every equilibrium (LUSER: each block)
    with torch.no_grad():
        model(y, op, x0)
    assert len(model.records) == stages
    for rec in model.records:
        assert rec["jacobian_spectral_radius"].shape == (2,)
        assert "backward_iterations" not in rec


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(name: str) -> None:
    op, x, y, x0 = _problem("mri4x", size=16, batch=2)
    cfg = EquilibriumConfig(forward=SolverConfig(max_iter=12), backward=SolverConfig(max_iter=12))
    torch.manual_seed(0)
    model = build_model(name, "mri4x", step_scale=1.0 / op.norm_sq(), equilibrium=cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = ((model(y, op, x0) - x) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["luser-dw", "deq4ip"])
def test_fbp_data_step_is_a_filtered_back_projection_of_the_residual(name: str) -> None:
    """``data_step = "fbp"``: ``d = x + step FBP(y - A x)``; the gradient step is unchanged."""
    from luser_cli.errors import ConfigError
    from luser_cli.operators.fbp import filtered_back_projection

    op, _, y, x0 = _problem("ct")
    scale = 1.0 / float(op.norm_sq())
    fbp = build_model(name, "ct", step_scale=scale, data_consistency=FBPStep())
    grad = build_model(name, "ct", step_scale=scale)
    assert (fbp.data_step, grad.data_step) == ("fbp", "gradient")
    grad.load_state_dict(fbp.state_dict())
    with torch.no_grad():
        fbp.step.fill_(0.7)
        grad.step.fill_(0.7)
        r = y - op.A(x0)
        want_fbp = x0 + 0.7 * filtered_back_projection(op, r, filter="hann")
        want_grad = x0 + 0.7 * scale * op.A_adjoint(r)
        fbp_step, grad_step = fbp.data_consistency, grad.data_consistency
        assert fbp_step.ray_weights(y) is None and grad_step.ray_weights(y) is None
        torch.testing.assert_close(fbp_step(x0, y, op, fbp.step, fbp.step_scale), want_fbp)
        torch.testing.assert_close(grad_step(x0, y, op, grad.step, grad.step_scale), want_grad)
        fbp.eval()
        grad.eval()
        assert not torch.allclose(fbp(y, op, x0), grad(y, op, x0))
    x0.requires_grad_(True)
    fbp.train()
    fbp(y, op, x0).square().sum().backward()  # differentiable through the filter
    assert fbp.step.grad is not None and torch.isfinite(fbp.step.grad)
    mri_op, _, mri_y, mri_x0 = _problem("mri4x")
    with pytest.raises(ConfigError, match="FBP needs a parallel-beam Radon operator"):
        model = build_model(name, "mri4x", step_scale=1.0, data_consistency=FBPStep())
        model(mri_y, mri_op, mri_x0)


def test_count_weights_are_relative_photon_counts_with_mean_one() -> None:
    y = torch.rand(2, 1, 5, 7, dtype=torch.float64) * 0.05
    y[0, 0, 0, 0] = -0.01  # noise can make a post-log value negative: clamped to 0
    y.requires_grad_(True)
    for power in (1.0, 0.5):
        w = count_weights(y, 81.35858, power)
        want = torch.exp(-81.35858 * power * y.detach().clamp_min(0))
        want = want / want.mean(dim=(1, 2, 3), keepdim=True)
        torch.testing.assert_close(w, want)
        torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.ones(2, dtype=torch.float64))
        assert not w.requires_grad  # weights are data, not a path for gradients into y
    # More photons (a smaller line integral) -> a larger weight; a higher power spreads more.
    w = count_weights(y, 81.35858, 0.5)
    assert w[1].flatten()[y[1].flatten().argmin()] == w[1].max()
    assert count_weights(y, 81.35858, 1.0).std() > w.std()


@pytest.mark.parametrize("name", ["luser-dw", "deq4ip"])
def test_weighted_data_step_back_projects_the_weighted_residual(name: str) -> None:
    """``ray_weight_power``: ``d = x + step B (W (y - A x))`` with the count weights of ``y``,
    the same parameters, and the unweighted model unchanged."""
    from luser_cli.operators.fbp import filtered_back_projection

    op, _, y, x0 = _problem("ct")
    scale = 1.0 / float(op.norm_sq())
    mu = 81.35858
    plain = build_model(name, "ct", step_scale=scale, data_consistency=FBPStep())
    for power in (0.5, 1.0):
        data = build_data_step("fbp", ray_weight_power=power, mu_max=mu)
        weighted = build_model(name, "ct", step_scale=scale, data_consistency=data)
        assert (weighted.ray_weight_power, weighted.mu_max) == (power, mu)
        assert count_parameters(weighted) == count_parameters(plain)
        weighted.load_state_dict(plain.state_dict())  # no new parameters or buffers
        with torch.no_grad():
            weighted.step.fill_(0.7)
            plain.step.fill_(0.7)
            r = y - op.A(x0)
            w = count_weights(y, mu, power)
            want = x0 + 0.7 * filtered_back_projection(op, w * r, filter="hann")
            torch.testing.assert_close(data.ray_weights(y), w)
            torch.testing.assert_close(data(x0, y, op, weighted.step, weighted.step_scale, w), want)
            want_plain = x0 + 0.7 * filtered_back_projection(op, r, filter="hann")
            plain_step = plain.data_consistency
            assert plain_step.ray_weights(y) is None
            torch.testing.assert_close(
                plain_step(x0, y, op, plain.step, plain.step_scale), want_plain
            )
            weighted.eval()
            plain.eval()
            assert not torch.allclose(weighted(y, op, x0), plain(y, op, x0))
        weighted.train()
        weighted(y, op, x0).square().sum().backward()
        assert weighted.step.grad is not None and torch.isfinite(weighted.step.grad)
    with pytest.raises(ValueError, match="need the data's mu_max"):
        build_data_step("gradient", ray_weight_power=0.5)


def test_data_steps_are_built_once_from_the_physics() -> None:
    """``data_step_from_physics``: CT's ``mu_max`` goes to the ray weights; other tasks have no
    photon counts to weight by; the modules hold no state (same state dict for every step)."""
    from luser_cli.physics import resolve_physics

    ct = resolve_physics("ct", {"mu_max": 50.0})
    weighted = data_step_from_physics("fbp", ct, 0.5)
    assert isinstance(weighted, FBPStep) and weighted.weights is not None
    assert (weighted.weights.mu_max, weighted.ray_weight_power) == (50.0, 0.5)
    plain = data_step_from_physics("gradient", resolve_physics("mri4x"))
    assert isinstance(plain, GradientStep) and plain.weights is None
    with pytest.raises(ValueError, match="need the data's mu_max"):
        data_step_from_physics("gradient", resolve_physics("mri4x"), 0.5)
    with pytest.raises(ValueError, match="data_step must be one of"):
        build_data_step("newton")
    with pytest.raises(ValueError, match=r"ray_weight_power must be in \[0, 1\]"):
        build_data_step("fbp", ray_weight_power=2.0, mu_max=1.0)
    for step in (weighted, plain):
        assert not list(step.parameters()) and not list(step.buffers())
        assert step.state_dict() == {}
    keys = {
        kind: list(build_model("luser-sw", "ct", step_scale=1.0, data_consistency=s).state_dict())
        for kind, s in (("plain", GradientStep()), ("weighted", weighted))
    }
    assert keys["plain"] == keys["weighted"]


def test_models_are_built_with_keywords_and_every_prox_is_called_alike() -> None:
    """Constructors take keyword arguments; the shallow block owns its solver settings, so the
    loop calls every prox as ``prox(d)``; the block returns ``(r, info)``."""
    from luser_cli.models.deq4ip import DEQ4IP

    with pytest.raises(TypeError):
        LoopUnrolled("lu-dncnn", [DnCNN(1)], 8, 1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        DEQ4IP(1, 1.0, EquilibriumConfig())  # type: ignore[misc]
    cfg = EquilibriumConfig(forward=SolverConfig(max_iter=7, tol=0.0))
    model = build_model("luser-sw", "ct", step_scale=1.0, equilibrium=cfg)
    (block,) = model.prox
    assert block.equilibrium == cfg
    r, info = block(torch.rand(2, 1, 8, 8))
    assert r.shape == (2, 1, 8, 8)
    assert bool((info["forward_iterations"] == 7).all())
    assert not build_model("lu-dncnn", "ct", step_scale=1.0).is_equilibrium()
    assert model.is_equilibrium()


def test_ray_weights_are_refused_outside_ct_and_outside_0_to_1() -> None:
    from luser_cli.errors import ConfigError
    from luser_cli.training.config import apply_overrides, preset_for_task

    with pytest.raises(ConfigError, match=r"ray_weight_power: .* not task 'mri4x'"):
        apply_overrides(preset_for_task("mri4x"), {"model.ray_weight_power": 0.5})
    with pytest.raises(ConfigError, match=r"ray_weight_power: .*less than or equal to 1"):
        apply_overrides(preset_for_task("ct"), {"model.ray_weight_power": 2.0})


def test_info_cli_reports_counts_operator_calls_and_the_data_step(tmp_path) -> None:
    import json

    from fixtures.cli import run_cli

    code, out, err = run_cli(["info", "--task", "ct", "--model", "luser-dw", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["parameters"] == EXPECTED["ct"]["luser-dw"]
    assert data["operator_applications"]["A"] == data["operator_applications"]["A_adjoint"] == 8
    assert data["data_step"].startswith("fbp")  # ct.toml's
    assert data["ray_weights"].startswith("p = 0.5")
    args = ["info", "--task", "ct", "--model", "luser-dw", "--preset", "ct-paper", "--json"]
    code, out, err = run_cli(args)
    assert code == 0, err
    assert json.loads(out)["data_step"].startswith("gradient")
    assert json.loads(out)["ray_weights"].startswith("none")
    assert json.loads(out)["parameters"] == EXPECTED["ct"]["luser-dw"]  # no new parameters


def test_psnr_loss_is_minus_the_mean_per_image_psnr_and_weights_images_equally() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    from luser_cli.training.batches import reconstruction_loss

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    out = x + noise * torch.tensor([0.01, 0.1, 0.3], dtype=torch.float64)[:, None, None, None]
    out.requires_grad_(True)
    loss = reconstruction_loss(x, out, aux_loss=False, kind="psnr")
    psnrs = [peak_signal_noise_ratio(a.numpy(), b.detach().numpy(), data_range=1.0) for a, b in
             zip(x, out, strict=True)]  # fmt: skip
    assert float(loss.detach()) == pytest.approx(-sum(psnrs) / 3, rel=1e-10)
    loss.backward()
    # Each image's gradient is its MSE gradient over its own MSE: the three images' gradient
    # norms are then equal up to the ratio of their RMS errors, not of their squared errors.
    mse = ((out - x) ** 2).flatten(1).mean(1).detach()
    want = 10 / math.log(10) * 2 * (out - x).detach() / (mse[:, None, None, None] * 128) / 3
    torch.testing.assert_close(out.grad, want)
    mse_loss = reconstruction_loss(x, out, aux_loss=False)
    assert float(mse_loss.detach()) == pytest.approx(float(mse.mean()), rel=1e-10)
    stages = [out, out * 0.5]  # aux: the mean of the per-stage losses
    aux = reconstruction_loss(x, (out, stages), aux_loss=True, kind="psnr")
    per_stage = [reconstruction_loss(x, s, aux_loss=False, kind="psnr") for s in stages]
    assert float(aux.detach()) == pytest.approx(float(sum(per_stage).detach() / 2))


def test_info_cli_refuses_a_preset_for_another_task(tmp_path) -> None:
    from fixtures.cli import assert_clean_error, run_cli

    preset = tmp_path / "ct.toml"
    preset.write_text('task = "ct"\nimage_size = 32\n')
    code, _, err = run_cli(["info", "--task", "mri4x", "--model", "luser-dw", "--preset", preset])
    assert_clean_error(code, err, expect="is for task 'ct', not 'mri4x'")
