"""The implicit layer: exact gradients, JFB, memory, parametrisations, fake tensors, stats."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from luser_cli.solvers import EquilibriumConfig, SolverConfig, equilibrium

F64 = torch.float64
FIELDS = ("iterations", "residual", "converged", "diverged", "nonfinite")
TIGHT = EquilibriumConfig(
    forward=SolverConfig(tol=1e-11, max_iter=300),
    backward=SolverConfig(tol=1e-11, max_iter=300),
)


def _problem(gen: torch.Generator, batch: int = 3, ch: int = 2, size: int = 6):
    """``z = tanh(conv(z, W) + u)``, ``u = conv(x, V) + c``: contractive (||conv W|| < 0.6)."""
    w = torch.randn(ch, ch, 3, 3, generator=gen, dtype=F64)
    w = (0.2 * w / w.norm()).requires_grad_()
    v = (0.5 * torch.randn(ch, ch, 3, 3, generator=gen, dtype=F64)).requires_grad_()
    c = (0.1 * torch.randn(1, ch, 1, 1, generator=gen, dtype=F64)).requires_grad_()
    x = torch.randn(batch, ch, size, size, generator=gen, dtype=F64).requires_grad_()
    target = torch.randn(batch, ch, size, size, generator=gen, dtype=F64)

    def inject(x: Tensor) -> Tensor:
        return F.conv2d(x, v, padding=1) + c

    def step(z: Tensor, u: Tensor) -> Tensor:
        return torch.tanh(F.conv2d(z, w, padding=1) + u)

    return step, inject, x, (w, v, c), target


def _unrolled(step, inject, x, n: int = 60) -> Tensor:
    """Backprop reference: ``n`` tracked Picard steps (||conv W|| ~ 0.26: error ~ 0.26^n)."""
    u = inject(x)
    z = torch.zeros_like(x)
    for _ in range(n):
        z = step(z, u)
    return z


def _compare(a: Tensor, b: Tensor) -> tuple[float, float]:
    """(cosine similarity, relative error) of two gradients."""
    a, b = a.flatten(), b.flatten()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()))
    return cos, float((a - b).norm() / b.norm())


def _grads(loss: Tensor, wrt) -> list[Tensor]:
    return list(torch.autograd.grad(loss, wrt))


def test_implicit_gradient_matches_unrolled(gen):
    step, inject, x, params, target = _problem(gen)
    wrt = [x, *params]
    ref = _grads((_unrolled(step, inject, x) * target).sum(), wrt)
    for method in ("anderson", "picard"):
        cfg = EquilibriumConfig(
            forward=SolverConfig(method=method, tol=1e-11, max_iter=300),
            backward=SolverConfig(method=method, tol=1e-11, max_iter=300),
        )
        z, _ = equilibrium(step, inject, (x,), params, torch.zeros_like(x), cfg)
        assert z.grad_fn is not None
        got = _grads((z * target).sum(), wrt)
        for g, r in zip(got, ref, strict=True):
            cos, rel = _compare(g, r)
            assert cos >= 0.999 and rel <= 1e-3, (method, cos, rel)
            assert rel < 1e-7  # in fact exact to the solver tolerance


def test_expanded_output_gradient(gen):
    """``loss = z.sum()`` hands the backward a stride-0 (expanded) gradient."""
    step, inject, x, params, _ = _problem(gen)
    ref = _grads(_unrolled(step, inject, x).sum(), [x, *params])
    z, _ = equilibrium(step, inject, (x,), params, torch.zeros_like(x), TIGHT)
    for g, r in zip(_grads(z.sum(), [x, *params]), ref, strict=True):
        assert _compare(g, r)[1] < 1e-7


def test_jfb_is_an_approximation(gen):
    step, inject, x, params, target = _problem(gen)
    wrt = [x, *params]
    z, _ = equilibrium(step, inject, (x,), params, torch.zeros_like(x), TIGHT)
    exact = _grads((z * target).sum(), wrt)
    cfg = TIGHT.model_copy(update={"backward_mode": "jfb"})
    z, info = equilibrium(step, inject, (x,), params, torch.zeros_like(x), cfg)
    jfb = _grads((z * target).sum(), wrt)
    for g, e in zip(jfb, exact, strict=True):
        cos, rel = _compare(g, e)
        assert cos > 0.0 and rel > 0.01, (cos, rel)
    assert "backward_iterations" not in info  # no backward solve in JFB mode


def test_gradcheck():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(3, 3, generator=gen, dtype=F64)
    w = (0.5 * w / torch.linalg.matrix_norm(w, 2)).requires_grad_()
    v = torch.randn(3, 3, generator=gen, dtype=F64).requires_grad_()
    x = torch.randn(2, 3, generator=gen, dtype=F64).requires_grad_()
    cfg = EquilibriumConfig(
        forward=SolverConfig(tol=1e-14, max_iter=200),
        backward=SolverConfig(tol=1e-14, max_iter=200),
    )

    def fn(x: Tensor, w: Tensor, v: Tensor) -> Tensor:
        z, _ = equilibrium(
            lambda z, u: torch.tanh(z @ w.T + u),
            lambda x: x @ v.T,
            (x,),
            (w, v),
            torch.zeros_like(x),
            cfg,
        )
        return z

    assert torch.autograd.gradcheck(fn, (x, w, v), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_forward_saves_only_the_fixed_point_and_inputs(gen):
    step, inject, x, params, target = _problem(gen)
    y = torch.randn_like(x)  # a second input that does not require grad
    inject2 = lambda x, y: inject(x) + 0.1 * y  # noqa: E731
    saved = []
    for iters in (5, 60):
        nbytes = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal nbytes
            nbytes += t.untyped_storage().nbytes()
            return t

        cfg = EquilibriumConfig(forward=SolverConfig(tol=0.0, max_iter=iters))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z, _ = equilibrium(step, inject2, (x, y), params, torch.zeros_like(x), cfg)
        saved.append(nbytes)
        assert nbytes == 3 * x.numel() * x.element_size()  # z*, x, y
        # the output hangs directly off the Function: nothing else holds the iterates
        assert type(z.grad_fn).__name__ == "_EquilibriumBackward"
        leaves = {id(fn.variable) for fn, _ in z.grad_fn.next_functions if fn is not None}
        assert leaves == {id(t) for t in (x, *params)}
        (z * target).sum().backward()
    assert saved[0] == saved[1]


def test_keep_graph_same_gradient_more_memory(gen):
    """``graph="keep"`` (torchdeq / paper layout) holds the block's graph from forward to
    backward: the same gradient as the default recompute, and more saved tensors."""
    step, inject, x, params, target = _problem(gen)
    wrt = [x, *params]
    grads, saved, calls = {}, {}, {}
    for graph in ("recompute", "keep"):
        nbytes, n_inject = 0, 0

        def pack(t: Tensor) -> Tensor:
            nonlocal nbytes
            nbytes += t.untyped_storage().nbytes()
            return t

        def counted_inject(x: Tensor) -> Tensor:
            nonlocal n_inject
            n_inject += 1
            return inject(x)

        cfg = TIGHT.model_copy(update={"graph": graph})
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            z, _ = equilibrium(step, counted_inject, (x,), params, torch.zeros_like(x), cfg)
        saved[graph] = nbytes
        before = n_inject
        grads[graph] = _grads((z * target).sum(), wrt)
        calls[graph] = (before, n_inject - before)
    for g, r in zip(grads["keep"], grads["recompute"], strict=True):
        assert _compare(g, r)[1] < 1e-12
    assert saved["recompute"] == 2 * x.numel() * x.element_size()  # z*, x
    assert saved["keep"] >= saved["recompute"] + 2 * x.numel() * x.element_size()  # + graph
    # (injections in forward, in backward): keep builds the tracked one early, never recomputes
    assert calls == {"recompute": (1, 1), "keep": (2, 0)}


def test_stats_come_back_as_values(gen):
    """``(z, info)``: the forward statistics at once; the implicit backward adds its own to the
    same ``info`` when it runs (they exist only then)."""
    step, inject, x, params, target = _problem(gen, batch=4)
    z, entry = equilibrium(step, inject, (x,), params, torch.zeros_like(x), TIGHT)
    assert set(entry) == {f"forward_{k}" for k in FIELDS}
    (z * target).sum().backward()
    assert set(entry) == {f"{p}_{k}" for p in ("forward", "backward") for k in FIELDS}
    for prefix in ("forward_", "backward_"):
        assert entry[prefix + "iterations"].shape == (4,)
        assert entry[prefix + "iterations"].dtype == torch.int64
        assert entry[prefix + "residual"].shape == (4,)
        assert bool((entry[prefix + "residual"] <= 1e-11).all())
        assert bool(entry[prefix + "converged"].all())
        assert int(entry[prefix + "iterations"].min()) > 1
    # inference: no Function, forward stats only, a plain tensor
    with torch.no_grad():
        z, info = equilibrium(step, inject, (x,), params, torch.zeros_like(x), TIGHT)
    assert z.grad_fn is None and not z.requires_grad
    assert set(info) == {k for k in entry if k.startswith("forward_")}
    for key in info:
        torch.testing.assert_close(info[key], entry[key], rtol=0, atol=1e-12)


class _Scaled(nn.Module):
    """A custom parametrisation: ``W -> 0.2 W / ||W||_F``."""

    def forward(self, w: Tensor) -> Tensor:
        return 0.2 * w / w.norm()


def _conv_problem(conv_w: nn.Conv2d, conv_v: nn.Conv2d):
    def inject(x: Tensor) -> Tensor:
        return conv_v(x)

    def step(z: Tensor, u: Tensor) -> Tensor:
        return torch.tanh(conv_w(z) + u)

    return step, inject


def test_parametrized_weights_get_gradients():
    torch.manual_seed(3)
    conv_w = nn.Conv2d(2, 2, 3, padding=1, bias=False).double()
    parametrize.register_parametrization(conv_w, "weight", _Scaled())
    conv_v = spectral_norm(nn.Conv2d(2, 2, 3, padding=1).double())
    conv_v.eval()  # spectral norm's power iteration must not move between forward and backward
    step, inject = _conv_problem(conv_w, conv_v)
    params = [*conv_w.parameters(), *conv_v.parameters()]
    originals = [conv_w.parametrizations.weight.original, conv_v.parametrizations.weight.original]
    assert all(any(o is p for p in params) for o in originals)
    x = torch.randn(2, 2, 5, 5, dtype=F64, requires_grad=True)
    target = torch.randn(2, 2, 5, 5, dtype=F64)
    wrt = [x, *params]
    ref = _grads((_unrolled(step, inject, x) * target).sum(), wrt)
    z, _ = equilibrium(step, inject, (x,), params, torch.zeros_like(x), TIGHT)
    (z * target).sum().backward()
    got = [x.grad, *(p.grad for p in params)]
    for g, r in zip(got, ref, strict=True):
        assert g is not None
        cos, rel = _compare(g, r)
        assert cos >= 0.999 and rel <= 1e-6, (cos, rel)


def test_undeclared_parameter_is_an_error(gen):
    step, inject, x, params, target = _problem(gen)
    z, _ = equilibrium(step, inject, (x,), params[:2], torch.zeros_like(x), TIGHT)  # c missing
    try:
        (z * target).sum().backward()
    except RuntimeError as err:
        assert "not in `params`" in str(err)
    else:
        raise AssertionError("a used parameter missing from params must raise")


def test_shared_weights_across_stages_accumulate(gen):
    """8 sequential equilibrium stages with shared weights (LUSER-SW), vs unrolled backprop."""
    step, inject, x, params, target = _problem(gen, batch=2, size=5)

    def run(layer) -> Tensor:
        xk = x
        for _ in range(8):
            xk = xk + layer(xk)
        return (xk * target).sum()

    ref = _grads(run(lambda xk: _unrolled(step, inject, xk, n=50)), [x, *params])
    for t in (x, *params):
        t.grad = None
    loss = run(lambda xk: equilibrium(step, inject, (xk,), params, torch.zeros_like(xk), TIGHT)[0])
    loss.backward()
    for t, r in zip((x, *params), ref, strict=True):
        cos, rel = _compare(t.grad, r)
        assert cos >= 0.999 and rel <= 1e-6, (cos, rel)


def test_inputs_not_requiring_grad_and_frozen_params(gen):
    step, inject, x, params, target = _problem(gen)
    w, v, c = params
    x_plain = x.detach()
    z, _ = equilibrium(step, inject, (x_plain,), params, torch.zeros_like(x), TIGHT)
    gw, gv, gc = _grads((z * target).sum(), [w, v, c])
    ref = _grads((_unrolled(step, inject, x_plain) * target).sum(), [w, v, c])
    for g, r in zip((gw, gv, gc), ref, strict=True):
        assert _compare(g, r)[1] < 1e-7
    # only the input requires grad: the parameters are frozen (and may be omitted from params)
    frozen = [p.detach() for p in params]
    step2, inject2 = (
        lambda z, u: torch.tanh(F.conv2d(z, frozen[0], padding=1) + u),
        lambda x: F.conv2d(x, frozen[1], padding=1) + frozen[2],
    )
    z, _ = equilibrium(step2, inject2, (x,), [], torch.zeros_like(x), TIGHT)
    (gx,) = _grads((z * target).sum(), [x])
    (rx,) = _grads((_unrolled(step2, inject2, x) * target).sum(), [x])
    assert _compare(gx, rx)[1] < 1e-7


def test_fake_tensor_forward_and_backward():
    cfg = EquilibriumConfig(
        forward=SolverConfig(max_iter=4), backward=SolverConfig(max_iter=3)
    ).with_fixed_iterations()
    with FakeTensorMode():
        conv_w = spectral_norm(nn.Conv2d(8, 8, 3, padding=1))
        conv_v = nn.Conv2d(3, 8, 3, padding=1)
        head = nn.Conv2d(8, 3, 1)
        step, inject = _conv_problem(conv_w, conv_v)
        params = [*conv_w.parameters(), *conv_v.parameters()]
        d = torch.randn(4, 3, 16, 16, requires_grad=True)
        z, info = equilibrium(step, inject, (d,), params, torch.zeros(4, 8, 16, 16), cfg)
        assert z.shape == (4, 8, 16, 16)
        loss = head(z).square().mean()
        loss.backward()
        assert d.grad is not None and d.grad.shape == d.shape
        for p in params:
            assert p.grad is not None and p.grad.shape == p.shape
        for key in ("forward_iterations", "forward_residual", "backward_iterations"):
            assert info[key].shape == (4,)
