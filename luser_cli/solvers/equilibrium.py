"""The implicit (deep-equilibrium) layer: ``z* = step(z*, inject(*inputs))``, differentiable.

Forward: under ``no_grad``, ``u = inject(*inputs)`` once, then ``z*`` by the forward solver.
Only ``z*`` and ``inputs`` are saved, so the memory of a solve does not grow with its
iterations and no activation of the forward is kept.

Backward (``loss.backward()``): recompute ``u`` and ONE tracked application
``fz = step(z*, u)``, solve ``g = J^T g + grad_z`` (``J = d step / d z`` at ``z*``) with the
backward solver, each iteration one vector-Jacobian product through ``fz``, and return
``(d fz / d (inputs, params))^T g``: the implicit-function-theorem gradient. In ``"jfb"`` mode
``g = grad_z`` (Jacobian-free backprop: an approximation, no backward solve).

With ``cfg.graph == "keep"`` the forward instead builds ``u`` and ``fz`` with grad right after
the solve and holds their graph until backward (torchdeq's and the paper's layout: more
memory, no recomputation); the gradient is the same.

Implemented as a ``torch.autograd.Function`` (a hook on the output that calls ``autograd.grad``
through that same output would re-enter itself forever).

Statistics come back as values, as torchdeq's ``(z, info)``: :func:`equilibrium` returns the
forward solve's per-sample statistics with ``z*``. The backward solve's exist only once
``loss.backward()`` has run it, and autograd lets a Function's backward return nothing but
gradients; so the backward adds them (``backward_*``) to that same ``info`` dict, the one
mechanism by which anything reaches the caller after backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from luser_cli.solvers.anderson import anderson
from luser_cli.solvers.config import EquilibriumConfig, SolverConfig
from luser_cli.solvers.picard import picard
from luser_cli.solvers.stats import SolverStats

Solver = Callable[[Callable[[Tensor], Tensor], Tensor, SolverConfig], tuple[Tensor, SolverStats]]

#: Per-sample statistics of one equilibrium, ``{"forward_iterations": (B,), ...}``: the
#: :class:`SolverStats` fields with a ``forward_`` / ``backward_`` prefix (and, when probed,
#: ``jacobian_spectral_radius``). Callers may add their own keys (e.g. a stage number).
SolveInfo = dict[str, Any]

SOLVERS: dict[str, Solver] = {"anderson": anderson, "picard": picard}


def solve(
    f: Callable[[Tensor], Tensor], z0: Tensor, cfg: SolverConfig
) -> tuple[Tensor, SolverStats]:
    """Solve ``z = f(z)`` with the solver named by ``cfg.method``. ``z0``: ``(B, ...)``."""
    return SOLVERS[cfg.method](f, z0, cfg)


def equilibrium(
    step: Callable[[Tensor, Tensor], Tensor],
    inject: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    params: Sequence[Tensor],
    z0: Tensor,
    cfg: EquilibriumConfig,
    *,
    probe: int = 0,
    penalty: int = 0,
) -> tuple[Tensor, SolveInfo]:
    """The fixed point ``z* = step(z*, inject(*inputs))``, differentiable by implicit gradients.

    Args:
        step: ``z_next = step(z, u)``, ``z`` ``(B, ...)`` like ``z0``; must treat samples
            independently for the per-sample stopping to be meaningful.
        inject: ``u = inject(*inputs)``, computed once per solve (and once more in backward).
        inputs: the tensors ``inject`` depends on (may require grad; need not be leaves).
        params: every tensor requiring grad that ``step``/``inject`` use other than ``inputs``:
            leaf parameters (for a parametrised module, e.g. spectral norm, the
            ``parametrizations.<name>.original`` leaves; ``module.parameters()`` gives them).
            A used leaf missing here raises in backward (its gradient would be lost).
        z0: ``(B, ...)`` initial iterate (not differentiated: ``z*`` does not depend on it).
        cfg: forward / backward solver settings and ``backward_mode``.
        probe: if > 0, also estimate the spectral radius of the map's Jacobian at ``z*`` by
            this many power iterations
            (:func:`~luser_cli.solvers.jacobian.jacobian_spectral_radius`) and return it in
            ``info`` as ``jacobian_spectral_radius`` ``(B,)``. Diagnostics only: ``z*`` is
            unchanged.
        penalty: if > 0 and the call is differentiable (training), also return in ``info`` as
            ``jacobian_frobenius`` ``(n,)`` the differentiable estimate of ``||J||_F^2 / n`` at
            ``z*`` (:func:`~luser_cli.solvers.jacobian.jacobian_frobenius_sq`; Bai et al.'s
            Jacobian regulariser) of the first ``n = min(penalty, B)`` samples, for the caller
            to add to its loss. Its double backward costs about as much as the rest of a
            training step per sample, and the batch order is random, so one sample per step is
            an unbiased, cheap estimate where ``step`` treats samples independently. ``u`` is
            recomputed from detached inputs: the penalty trains the map, not the layers before
            it.

    Returns:
        ``(z*, info)``. ``z*`` ``(B, ...)``: with grad enabled and some input/param requiring
        grad it carries an implicit-gradient ``grad_fn``; otherwise (inference) it is a plain
        tensor. ``info`` (:data:`SolveInfo`): ``forward_<field>`` tensors ``(B,)`` from
        :class:`SolverStats` (``iterations``, ``residual``, ``converged``, ``diverged``,
        ``nonfinite``); once ``loss.backward()`` has run the backward solve (implicit mode
        only), the same dict also holds those fields with the ``backward_`` prefix.

    The backward recomputes ``inject`` and ``step`` from the saved inputs and the current
    values of ``params``: the caller must keep them unchanged between forward and backward (a
    parametrisation must give the same weights, e.g. spectral norm's power iteration must not
    move in between). With ``cfg.forward/backward.fixed_iterations`` the whole layer runs on
    fake tensors (``FakeTensorMode``).
    """
    inputs = tuple(inputs)
    params = tuple(params)
    info: SolveInfo = {}
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs + params)
    if not needs_grad:
        with torch.no_grad():
            u = inject(*inputs)
            z, stats = solve(lambda z: step(z, u), z0, cfg.forward)
        info.update(stats.as_dict("forward_"))
        _probe(step, u, z, probe, info)
        return z, info
    z = _Equilibrium.apply(step, inject, cfg, info, probe, len(inputs), z0, *inputs, *params)
    if penalty:
        from luser_cli.solvers.jacobian import jacobian_frobenius_sq

        n = min(int(penalty), z.shape[0])
        u = inject(*(t.detach() for t in inputs))[:n]
        info["jacobian_frobenius"] = jacobian_frobenius_sq(lambda r: step(r, u), z[:n])
    return z, info


def _probe(
    step: Callable[[Tensor, Tensor], Tensor], u: Tensor, z: Tensor, iterations: int, info: SolveInfo
) -> None:
    """Add the Jacobian's spectral-radius estimate at ``z`` to ``info`` (``probe`` of
    :func:`equilibrium`)."""
    if iterations:
        from luser_cli.solvers.jacobian import jacobian_spectral_radius

        gen = torch.Generator().manual_seed(0)
        info["jacobian_spectral_radius"] = jacobian_spectral_radius(
            lambda r: step(r, u), z, max(2, iterations), gen
        )


#: Arguments of :meth:`_Equilibrium.forward` before the tensors (``step`` ... ``z0``).
_LEADING = 7


class _Equilibrium(torch.autograd.Function):
    """``z* = step(z*, inject(*inputs))`` with an implicit (or JFB) backward.

    ``info`` is the dict :func:`equilibrium` returns: the forward adds its statistics before
    the caller gets it, the implicit backward its own when it runs."""

    @staticmethod
    def forward(
        ctx: Any,
        step: Callable[[Tensor, Tensor], Tensor],
        inject: Callable[..., Tensor],
        cfg: EquilibriumConfig,
        info: SolveInfo,
        probe: int,
        n_inputs: int,
        z0: Tensor,
        *tensors: Tensor,
    ) -> Tensor:
        inputs = tensors[:n_inputs]
        with torch.no_grad():
            u = inject(*inputs)
            z, stats = solve(lambda z: step(z, u), z0, cfg.forward)
        info.update(stats.as_dict("forward_"))
        _probe(step, u, z, probe, info)
        ctx.step, ctx.inject, ctx.cfg, ctx.info, ctx.n_inputs = step, inject, cfg, info, n_inputs
        ctx.params = tensors[n_inputs:]  # references to leaves: no memory, not saved tensors
        ctx.save_for_backward(z, *inputs)
        ctx.kept = None
        if cfg.graph == "keep":
            input_needs = ctx.needs_input_grad[_LEADING : _LEADING + n_inputs]
            ctx.kept = _tracked_application(step, inject, z, inputs, input_needs)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        z, *inputs = ctx.saved_tensors
        n_inputs: int = ctx.n_inputs
        cfg: EquilibriumConfig = ctx.cfg
        params: tuple[Tensor, ...] = ctx.params
        needs = ctx.needs_input_grad[_LEADING:]  # after step, inject, ..., z0
        input_needs, param_needs = needs[:n_inputs], needs[n_inputs:]
        kept, ctx.kept = ctx.kept, None
        z_, inputs_, fz = kept or _tracked_application(ctx.step, ctx.inject, z, inputs, input_needs)
        del kept
        targets = [x for x, n in zip(inputs_, input_needs, strict=True) if n]
        targets += [p for p, n in zip(params, param_needs, strict=True) if n]
        if not fz.requires_grad:  # step/inject ignore everything that requires grad
            return (None,) * (_LEADING + len(needs))
        _check_declared(fz, [z_, *inputs_, *params])

        if cfg.backward_mode == "jfb":
            g = grad_z
        else:

            def adjoint_step(g: Tensor) -> Tensor:
                (vjp,) = torch.autograd.grad(fz, z_, g, retain_graph=True, allow_unused=True)
                return grad_z if vjp is None else vjp + grad_z

            g, stats = solve(adjoint_step, grad_z, cfg.backward)
            ctx.info.update(stats.as_dict("backward_"))  # known only now: see the module doc

        grads = iter(torch.autograd.grad(fz, targets, g, allow_unused=True))
        return (None,) * _LEADING + tuple(next(grads) if n else None for n in needs)


def _tracked_application(
    step: Callable[[Tensor, Tensor], Tensor],
    inject: Callable[..., Tensor],
    z: Tensor,
    inputs: Sequence[Tensor],
    input_needs: Sequence[bool],
) -> tuple[Tensor, list[Tensor], Tensor]:
    """``(z_, inputs_, fz)``: detached leaves and ``fz = step(z_, inject(*inputs_))`` with grad."""
    with torch.enable_grad():
        z_ = z.detach().requires_grad_()
        inputs_ = [x.detach().requires_grad_(n) for x, n in zip(inputs, input_needs, strict=True)]
        return z_, inputs_, step(z_, inject(*inputs_))


def _check_declared(fz: Tensor, declared: Sequence[Tensor], limit: int = 100_000) -> None:
    """Raise if the graph of ``fz`` reaches a leaf requiring grad that is not ``declared``."""
    if fz.grad_fn is None:
        return
    allowed = {id(t) for t in declared}
    seen: dict[int, object] = {}  # id -> node (kept alive so ids are not reused)
    stack = [fz.grad_fn]
    missing: list[Tensor] = []
    while stack and len(seen) < limit:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in allowed:
                missing.append(variable)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    if missing:
        shapes = ", ".join(str(tuple(t.shape)) for t in missing[:5])
        raise RuntimeError(
            f"equilibrium(): step/inject use {len(missing)} tensor(s) requiring grad that are "
            f"not in `params` or `inputs` (shapes {shapes}); their gradients would be lost"
        )
