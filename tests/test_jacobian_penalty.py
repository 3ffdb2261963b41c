"""Issue 20: the Jacobian regulariser (Bai et al. 2021) and LUSER's starting gain.

The Hutchinson estimate of ``||J||_F^2 / n``, its gradient (a double backward through the
shallow block, channels-last fast paths included), that training on it makes a map contract, and
the settings' plumbing and error paths in ``luser train``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures.cli import run_cli

from luser_cli.models.registry import build_model
from luser_cli.models.shallow_block import ShallowEquilibriumBlock
from luser_cli.models.unrolled import conv_layout
from luser_cli.operators.blur import GaussianBlur
from luser_cli.solvers.jacobian import jacobian_frobenius_sq, jacobian_spectral_radius
from luser_cli.training.step import jacobian_penalty_of

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frobenius_estimate_is_unbiased_for_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)  # one matrix per sample
    z = torch.zeros(2, 6, dtype=torch.float64)
    torch.manual_seed(1)
    estimates = torch.stack(
        [jacobian_frobenius_sq(lambda v: torch.einsum("bij,bj->bi", a, v), z) for _ in range(4000)]
    )
    exact = a.pow(2).sum(dim=(1, 2)) / 6
    assert torch.allclose(estimates.mean(0), exact, rtol=0.05)


def _penalty(block: ShallowEquilibriumBlock, d: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(3)  # the same probe vector every call
    return jacobian_frobenius_sq(lambda r: block.step(r, block.injection(d)), z).sum()


@pytest.mark.parametrize("param", ["mix.4.weight", "data.1.weight"])
def test_penalty_gradient_matches_finite_differences(param: str):
    """Double backward through spectral norm, GroupNorm (the channels-last fast path of Mix's
    per-channel GroupNorm included) and in-place LeakyReLU, in float64."""
    torch.manual_seed(0)
    block = ShallowEquilibriumBlock(1, init_gain=0.5).double()
    d = conv_layout(torch.randn(2, 1, 10, 10, dtype=torch.float64))
    z = conv_layout(0.1 * torch.randn(2, 1, 10, 10, dtype=torch.float64))
    p = dict(block.named_parameters())[param]
    _penalty(block, d, z).backward()
    analytic = p.grad[2].item()
    eps = 1e-4
    with torch.no_grad():
        p[2] += eps
        up = _penalty(block, d, z).item()
        p[2] -= 2 * eps
        down = _penalty(block, d, z).item()
        p[2] += eps
    assert analytic == pytest.approx((up - down) / (2 * eps), rel=1e-3, abs=1e-9)


def test_training_on_the_penalty_makes_an_expansive_block_contract():
    """PyTorch's default gain (1) makes the map expansive; minimising the penalty alone brings
    rho(J) at the same point well below 1."""
    torch.manual_seed(0)
    block = ShallowEquilibriumBlock(1, init_gain=1.0)
    d = conv_layout(torch.rand(2, 1, 12, 12))
    z = conv_layout(0.1 * torch.randn(2, 1, 12, 12))

    def rho() -> float:
        with torch.no_grad():
            u = block.injection(d)
        gen = torch.Generator().manual_seed(0)
        return float(jacobian_spectral_radius(lambda r: block.step(r, u), z, 20, gen).max())

    before = rho()
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        jacobian_frobenius_sq(lambda r: block.step(r, block.injection(d)), z).mean().backward()
        opt.step()
    after = rho()
    assert before > 1.0 and after < 0.5 * before and after < 1.0


def test_models_return_the_penalty_only_in_training_and_when_asked():
    torch.manual_seed(0)
    model = build_model("luser-dw", "deblur", step_scale=1.0, stages=2, init_gain=0.1)
    assert float(model.prox[0].mix[4].weight[0].detach()) == pytest.approx(0.1)
    x = torch.rand(2, 3, 8, 8)
    op = GaussianBlur((3, 8, 8), torch.ones(3, 3) / 9)
    model.train()
    model(op.A(x), op, op.A(x))
    assert jacobian_penalty_of(model.records) is None
    model.jacobian_penalty = True
    model(op.A(x), op, op.A(x))
    penalty = jacobian_penalty_of(model.records)
    assert penalty is not None and penalty.grad_fn is not None and float(penalty) > 0
    # One sample per equilibrium and step (the cost of the double backward).
    assert [tuple(r["jacobian_frobenius"].shape) for r in model.records] == [(1,), (1,)]
    model.eval()
    with torch.no_grad():
        model(op.A(x), op, op.A(x))
    assert jacobian_penalty_of(model.records) is None


TINY = ["--image-size", "16", "--steps", "2", "--batch-size", "2", "--val-size", "2"]
TINY += ["--threads", "1", "--no-progress"]


def test_train_records_the_penalty_and_the_gain(tmp_path: Path):
    out = tmp_path / "run"
    args = ["train", "--task", "mri4x", "--model", "luser-dw", "--stages", "2", *TINY]
    flags = ["--jacobian-penalty", "1", "--init-gain", "0.2", "--warm-start"]
    code, _, err = run_cli([*args, *flags, "--out", out])
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    values = [r["fp_jacobian_frobenius"] for r in rows if "loss" in r]
    assert len(values) == 2 and all(v > 0 for v in values)
    stored = (out / "preset.toml").read_text()
    assert "jacobian_penalty = 1.0" in stored and "init_gain = 0.2" in stored
    assert "stages = 2" in stored and "warm_start = true" in stored


@pytest.mark.parametrize(
    ("model", "flag", "message"),
    [
        ("lu-dncnn", ["--jacobian-penalty", "1"], "needs an equilibrium model"),
        ("deq4ip", ["--init-gain", "0.5"], "LUSER setting"),
        ("luser-dw", ["--init-gain", "2"], "init_gain"),
        ("luser-dw", ["--jacobian-penalty", "-1"], "jacobian_penalty"),
        ("lu-dncnn", ["--warm-start"], "LUSER setting"),
    ],
)
def test_bad_equilibrium_settings_are_one_line_errors(tmp_path, model, flag, message):
    args = ["train", "--task", "ct", "--model", model, *TINY, *flag, "--out", tmp_path / "r"]
    code, _, err = run_cli(args)
    assert code != 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint_last.pt").exists()


def test_warm_start_changes_the_iterations_not_the_fixed_point():
    """Each stage's solve started from the previous stage's fixed point: same output (the maps
    contract), solved from another start."""
    from luser_cli.solvers import EquilibriumConfig, SolverConfig

    torch.manual_seed(0)
    tight = EquilibriumConfig(forward=SolverConfig(tol=1e-7, max_iter=200))
    cold = build_model("luser-dw", "deblur", step_scale=1.0, stages=3, equilibrium=tight)
    warm = build_model(
        "luser-dw", "deblur", step_scale=1.0, stages=3, equilibrium=tight, warm_start=True
    )
    warm.load_state_dict(cold.state_dict())
    op = GaussianBlur((3, 12, 12), torch.ones(3, 3) / 9)
    y = op.A(torch.rand(2, 3, 12, 12))
    with torch.no_grad():
        out_cold, out_warm = cold.eval()(y, op, y), warm.eval()(y, op, y)
    assert torch.allclose(out_cold, out_warm, atol=1e-5)
    starts = [r["forward_residual"] for r in warm.records]
    assert all(bool(r.max() < 1e-6) for r in starts)
    assert warm.warm_start and not build_model("lu-dncnn", "deblur", step_scale=1.0).warm_start
