"""Fixed-point solvers: Anderson vs Picard, robustness, stats, fake tensors."""

from __future__ import annotations

import math

import pydantic
import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from luser_cli.solvers import (
    SOLVERS,
    EquilibriumConfig,
    SolverConfig,
    SolverStats,
    anderson,
    picard,
    solve,
    summarize,
)

F64 = torch.float64


def _orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    return q


def _linear_contraction(gen: torch.Generator, d: int = 48, batch: int = 4):
    """``f(z)_b = rho_b S z_b + c_b`` with S symmetric, spectrum in [-1, 1]; rho_b per sample."""
    q = _orthogonal(d, gen)
    sym = q @ torch.diag(torch.linspace(-1.0, 1.0, d, dtype=F64)) @ q.T
    rho = torch.tensor([0.3, 0.6, 0.9, 0.95], dtype=F64)[:batch]
    c = torch.randn(batch, d, generator=gen, dtype=F64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return rho[:, None] * (z @ sym.T) + c

    # exact fixed points: (I - rho S) z = c
    eye = torch.eye(d, dtype=F64)
    z_star = torch.stack(
        [torch.linalg.solve(eye - r * sym, cb) for r, cb in zip(rho, c, strict=True)]
    )
    return f, z_star


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anderson_beats_picard_on_contraction(gen, dtype):
    f, z_star = _linear_contraction(gen)
    z0 = torch.zeros_like(z_star, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    cfg = SolverConfig(tol=tol, max_iter=500)

    def g(z):
        return f(z.to(F64)).to(dtype)

    za, sa = anderson(g, z0, cfg)
    zp, sp = picard(g, z0, cfg.model_copy(update={"method": "picard"}))
    assert za.dtype == dtype and za.shape == z0.shape
    assert bool(sa.converged.all()) and bool(sp.converged.all())
    assert sa.iterations.dtype == torch.int64 and sa.residual.shape == (4,)
    assert bool((sa.residual <= tol).all())
    # hard samples: Anderson needs far fewer evaluations than Picard
    assert int(sa.iterations[-1]) * 2 < int(sp.iterations[-1])
    assert int(sa.iterations.sum()) < int(sp.iterations.sum())
    # per-sample difficulty shows in the per-sample counts (rho 0.3 vs 0.95)
    assert int(sa.iterations[0]) < int(sa.iterations[-1])
    assert int(sp.iterations[0]) < int(sp.iterations[-1])
    # same fixed point, the right one
    err_a = torch.linalg.vector_norm(za.to(F64) - z_star, dim=1) / z_star.norm(dim=1)
    err_p = torch.linalg.vector_norm(zp.to(F64) - z_star, dim=1) / z_star.norm(dim=1)
    bound = 50 * tol
    assert bool((err_a < bound).all()) and bool((err_p < bound).all())


def test_anderson_nonlinear_contraction_and_tanh(gen):
    d = 32
    w = torch.randn(d, d, generator=gen, dtype=F64)
    w = 0.95 * w / torch.linalg.matrix_norm(w, 2)
    b = 0.05 * torch.randn(3, d, 4, generator=gen, dtype=F64)  # z of shape (B, d, 4)

    def f(z):
        return torch.tanh(torch.einsum("ij,bjk->bik", w, z) + b)

    z0 = torch.zeros_like(b)
    cfg = SolverConfig(tol=1e-9, max_iter=1000)
    za, sa = anderson(f, z0, cfg)
    zp, sp = picard(f, z0, cfg)
    assert bool(sa.converged.all()) and bool(sp.converged.all())
    assert int(sa.iterations.max()) < int(sp.iterations.min())
    assert torch.allclose(za, zp, atol=1e-7)
    assert torch.allclose(f(za), za, atol=1e-8)


def test_samples_are_independent(gen):
    """A batch solve equals the solves of each sample alone (no coupling across the batch)."""
    f, z_star = _linear_contraction(gen)
    cfg = SolverConfig(tol=0.0, max_iter=25, fixed_iterations=True)
    zb, sb = anderson(f, torch.zeros_like(z_star), cfg)
    for i in range(4):

        def f_single(z, i=i):  # sample i of f, alone (f is affine and per sample)
            full = torch.zeros_like(z_star).index_copy(0, torch.tensor([i]), z)
            return f(full)[i : i + 1]

        zi, si = anderson(f_single, torch.zeros_like(z_star[:1]), cfg)
        assert torch.allclose(zi[0], zb[i], rtol=1e-9, atol=1e-12)
        assert torch.allclose(si.residual[0], sb.residual[i], rtol=1e-6, atol=1e-15)


def test_noncontractive_stops_honestly():
    gen = torch.Generator().manual_seed(0)
    d = 40
    rot = 1.5 * _orthogonal(d, gen)  # rotation-scaling, every eigenvalue of modulus 1.5
    c = torch.randn(4, d, generator=gen, dtype=F64)
    calls = 0

    def f(z):
        nonlocal calls
        calls += 1
        return z @ rot.T + c

    z, st = anderson(f, torch.zeros(4, d, dtype=F64), SolverConfig(max_iter=60, tol=1e-6))
    assert calls == 60
    assert not bool(st.converged.any())
    assert bool((st.iterations == 60).all())
    assert bool(torch.isfinite(z).all()) and bool(torch.isfinite(st.residual).all())
    # the reported residual is the true residual of the returned iterate
    fz = z @ rot.T + c
    true_res = (fz - z).norm(dim=1) / (fz.norm(dim=1) + 1e-5)
    assert torch.allclose(st.residual, true_res, rtol=1e-6)
    assert bool((st.residual > 1e-6).all())

    # z -> 2 z + 1: Picard runs away; best iterate returned, flagged, never NaN
    z, st = picard(lambda z: 2 * z + 1, torch.zeros(2, 3, 5, dtype=F64), SolverConfig(max_iter=80))
    assert not bool(st.converged.any()) and bool(st.diverged.all())
    assert bool((st.iterations == 80).all()) and bool(torch.isfinite(z).all())
    assert bool((st.residual > 0.49).all()) and bool((st.residual < 0.51).all())
    # float32 norms overflow: reported as nonfinite, not as a (fake) zero residual
    z, st = picard(lambda z: 2 * z + 1, torch.zeros(2, 8), SolverConfig(max_iter=300))
    assert not bool(st.converged.any()) and bool(st.nonfinite.all())
    assert bool(torch.isfinite(z).all())


def test_singular_gram_and_constant_map(gen):
    z0 = torch.randn(3, 2, 7, generator=gen)
    # constant map: every residual after the first is exactly 0 -> Gram matrix all zeros
    z, st = anderson(lambda z: torch.ones_like(z), z0, SolverConfig(max_iter=10, tol=0.0))
    assert torch.equal(z, torch.ones_like(z)) and bool(st.converged.all())
    # identical history columns: f(z) = z + 1 gives G_i = 1 for every i (rank-one Gram)
    z, st = anderson(lambda z: z + 1, z0, SolverConfig(max_iter=12, tol=1e-3, regularization=0.0))
    assert bool(torch.isfinite(z).all()) and bool(torch.isfinite(st.residual).all())
    assert not bool(st.converged.any())
    # fixed point at exactly zero, with lambda = 0 (Gram exactly zero after convergence)
    z, st = anderson(lambda z: 0.5 * z, z0, SolverConfig(max_iter=40, tol=0.0, regularization=0))
    assert bool(torch.isfinite(z).all()) and z.abs().max() < 1e-6


def test_nan_sample_does_not_poison_others(gen):
    f, z_star = _linear_contraction(gen)
    bad = 2

    def f_nan(z):
        out = f(z)
        # sample 2 turns NaN once its iterate gets near the fixed point; sample 0 is Inf from start
        near = (z[bad] - z_star[bad]).norm() < 0.5 * z_star[bad].norm()
        out[bad] = torch.where(near, torch.nan, out[bad])
        out[0] = torch.inf
        return out

    cfg = SolverConfig(tol=1e-8, max_iter=300)
    z, st = anderson(f_nan, torch.zeros_like(z_star), cfg)
    _, st_ref = anderson(f, torch.zeros_like(z_star), cfg)
    assert bool(torch.isfinite(z).all())
    assert st.nonfinite.tolist() == [True, False, True, False]
    assert st.converged.tolist() == [False, True, False, True]
    assert bool(torch.isfinite(st.residual[1:]).all())
    assert math.isinf(float(st.residual[0]))  # never a finite evaluation: z0 returned
    assert torch.equal(z[0], torch.zeros_like(z[0]))
    for i in (1, 3):
        assert torch.allclose(z[i], z_star[i], atol=1e-6)
        assert int(st.iterations[i]) == int(st_ref.iterations[i])
    # the NaN sample keeps its best finite iterate (well on its way to the fixed point)
    assert float((z[bad] - z_star[bad]).norm()) < float(z_star[bad].norm())


@pytest.mark.parametrize("solver", [anderson, picard])
def test_fixed_iterations_and_check_every(solver, gen):
    f, z_star = _linear_contraction(gen)
    calls = 0

    def counted(z):
        nonlocal calls
        calls += 1
        return f(z)

    cfg = SolverConfig(tol=1.0, max_iter=17, fixed_iterations=True)  # tol met at once
    _, st = solver(counted, torch.zeros_like(z_star), cfg)
    assert calls == 17 and bool((st.iterations == 1).all())

    calls = 0
    cfg = SolverConfig(tol=1e-6, max_iter=1000, check_every=7)
    _, st = solver(counted, torch.zeros_like(z_star), cfg)
    assert calls % 7 == 0 and calls < 1000
    assert int(st.iterations.max()) <= calls < int(st.iterations.max()) + 7


@pytest.mark.parametrize("method", ["anderson", "picard"])
def test_fixed_iterations_run_on_fake_tensors(method):
    cfg = SolverConfig(method=method, max_iter=6, fixed_iterations=True, damping=0.8)
    with FakeTensorMode():
        w = torch.randn(8, 8) * 0.1
        z0 = torch.zeros(4, 2, 8)
        z, st = solve(lambda z: torch.tanh(z @ w + 1), z0, cfg)
        assert z.shape == (4, 2, 8)
        for t in (st.iterations, st.residual, st.converged, st.diverged, st.nonfinite):
            assert t.shape == (4,)
    # without fixed iterations the stopping test needs data: refused on fake tensors
    with FakeTensorMode(), pytest.raises(DataDependentOutputException):
        solve(
            lambda z: z * 0.5, torch.zeros(2, 3), cfg.model_copy(update={"fixed_iterations": False})
        )


def test_damping_and_config_validation(gen):
    f, z_star = _linear_contraction(gen)
    z, st = anderson(f, torch.zeros_like(z_star), SolverConfig(tol=1e-8, max_iter=300, damping=0.7))
    assert bool(st.converged.all()) and torch.allclose(z, z_star, atol=1e-6)
    z, st = picard(f, torch.zeros_like(z_star), SolverConfig(tol=1e-8, max_iter=900, damping=0.7))
    assert bool(st.converged.all()) and torch.allclose(z, z_star, atol=1e-6)
    for bad in ({"max_iter": 0}, {"damping": 0}, {"method": "broyden"}, {"unknown": 1}):
        with pytest.raises(pydantic.ValidationError):
            SolverConfig(**bad)
    cfg = EquilibriumConfig().with_fixed_iterations()
    assert cfg.forward.fixed_iterations and cfg.backward.fixed_iterations
    assert not EquilibriumConfig().forward.fixed_iterations


def test_stats_summary(gen):
    f, z_star = _linear_contraction(gen)
    _, st = anderson(f, torch.zeros_like(z_star), SolverConfig(tol=1e-6, max_iter=200))
    assert isinstance(st, SolverStats)
    s = st.summary()
    assert s["mean_iterations"] == pytest.approx(float(st.iterations.double().mean()))
    assert s["converged_fraction"] == 1.0 and s["max_residual"] <= 1e-6
    both = summarize([st.as_dict("forward_"), {**st.as_dict("forward_"), "stage": 3}])
    assert both["forward_max_iterations"] == float(st.iterations.max())


# -- the solver contract, for every registered solver ---------------------------------------------
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_keeps_the_contract(name: str, gen) -> None:
    """``solver(f, z0, cfg) -> (z, SolverStats)``: per-sample convergence to the fixed point,
    samples independent, true residuals, honest stops and NaN isolation."""
    solver = SOLVERS[name]
    f, z_star = _linear_contraction(gen)
    z, st = solver(f, torch.zeros_like(z_star), SolverConfig(tol=1e-8, max_iter=2000))
    assert isinstance(st, SolverStats) and st.iterations.shape == (4,)
    assert bool(st.converged.all()) and torch.allclose(z, z_star, atol=1e-6)
    fz = f(z)
    true_res = (fz - z).norm(dim=1) / (fz.norm(dim=1) + 1e-5)
    assert bool((true_res <= 1.01e-8).all())
    # the slowest contraction (rho 0.95) needs the most iterations
    assert int(st.iterations[3]) >= int(st.iterations[0])

    # no coupling across the batch
    fixed = SolverConfig(tol=0.0, max_iter=15, fixed_iterations=True)
    zb, _ = solver(f, torch.zeros_like(z_star), fixed)
    for i in range(4):

        def f_single(x, i=i):
            full = torch.zeros_like(z_star).index_copy(0, torch.tensor([i]), x)
            return f(full)[i : i + 1]

        zi, _ = solver(f_single, torch.zeros_like(z_star[:1]), fixed)
        assert torch.allclose(zi[0], zb[i], rtol=1e-9, atol=1e-12)

    # a map without a fixed point: stops at max_iter, flagged, finite
    z, st = solver(lambda x: x + 1, torch.zeros(2, 3, 5, dtype=F64), SolverConfig(max_iter=40))
    assert not bool(st.converged.any()) and bool((st.iterations == 40).all())
    assert bool(torch.isfinite(z).all())

    # a sample that is infinite from the start does not poison the others
    def f_inf(x):
        out = f(x)
        out[0] = torch.inf
        return out

    z, st = solver(f_inf, torch.zeros_like(z_star), SolverConfig(tol=1e-8, max_iter=2000))
    assert st.nonfinite.tolist() == [True, False, False, False]
    assert st.converged.tolist() == [False, True, True, True]
    assert torch.allclose(z[1:], z_star[1:], atol=1e-6) and bool(torch.isfinite(z).all())
