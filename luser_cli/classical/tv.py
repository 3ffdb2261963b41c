"""Total-variation reconstruction by the Chambolle–Pock primal–dual algorithm (PDHG).

Solves, independently for every sample of a batch,

    min_x  1/2 ||A x - y||_2^2 + weight * TV(x)   (+ indicator{x >= 0} when ``nonneg``)

with the isotropic *vectorial* total variation

    TV(x) = sum_{i,j} sqrt( sum_c (D_h x)_{c,i,j}^2 + (D_w x)_{c,i,j}^2 ),

forward differences with a zero difference on the last row/column (Neumann boundary, as
``skimage.restoration.denoise_tv_chambolle``). All channels share one edge set: the RGB channels
of a photograph, the real and imaginary parts of an MRI image.

Two forms of Chambolle–Pock (2011), both with one ``A`` and one ``A_adjoint`` per iteration:

- generic (any :class:`~luser_cli.operators.base.LinearOperator`): both the data term and TV are
  dualised, ``K = [A; nu grad]``, so only ``A`` and ``A_adjoint`` are needed; ``nu =
  sqrt(||A||^2 / 8)`` rescales the gradient to the operator's norm (Sidky et al. 2012), so
  ``||K||^2 <= 2 ||A||^2`` with ``||A||^2 = op.norm_sq()``, and ``tau sigma 2 ||A||^2 = 0.99``.
  Non-negativity is the primal prox.
- exact data prox, ``K = grad`` (``tau sigma 8 = 0.99``), where ``(I + tau A^T A)^{-1}`` is cheap:
  circulant operators that expose ``transfer_function()`` (the circular Gaussian blur: a
  division in Fourier) and the un-padded masked Fourier operator with a 0/1 mask (``A^T A`` is
  an orthogonal projection). Used when ``nonneg`` is off; converges in fewer iterations.

Step sizes: ``tau / sigma = balance^2 * scale / radius``, the ratio of the primal variable's
scale (a robust max of the start image) to the dual's (the radius of the TV dual ball), per
sample. This makes the iteration exactly equivariant to intensity scaling, ``(c y, c weight, c
x0) -> c x``, so the convergence speed does not depend on the data's units; ``balance`` (about
0.3-1) is tuned per task in :mod:`luser_cli.classical.methods`.

Deterministic; float32 or float64 (of ``y``); CPU or CUDA (of ``y`` and the operator).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from luser_cli.operators.base import LinearOperator

__all__ = [
    "divergence",
    "gradient",
    "robust_max",
    "total_variation",
    "tv_objective",
    "tv_reconstruct",
]

#: Bound on ``||grad||_2^2`` for 2D forward differences.
GRAD_NORM_SQ = 8.0


def gradient(x: Tensor) -> Tensor:
    """Forward differences: ``(B, C, H, W)`` -> ``(B, C, 2, H, W)`` (rows, then columns).

    The difference past the last row / column is zero (Neumann boundary).
    """
    dh = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    dw = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    return torch.stack((dh, dw), dim=2)


def divergence(p: Tensor) -> Tensor:
    """The negative adjoint of :func:`gradient`: ``(B, C, 2, H, W)`` -> ``(B, C, H, W)``.

    ``<gradient(x), p> == -<x, divergence(p)>`` exactly.
    """
    ph = p[:, :, 0, :-1, :]  # the last row of differences is structurally zero
    pw = p[:, :, 1, :, :-1]
    dh = F.pad(ph, (0, 0, 0, 1)) - F.pad(ph, (0, 0, 1, 0))
    dw = F.pad(pw, (0, 1, 0, 0)) - F.pad(pw, (1, 0, 0, 0))
    return dh + dw


def _pixel_norm(g: Tensor) -> Tensor:
    """``(B, C, 2, H, W)`` -> ``(B, 1, 1, H, W)``: Euclidean norm over channels and directions."""
    return torch.sqrt(torch.sum(g * g, dim=(1, 2), keepdim=True))


def total_variation(x: Tensor) -> Tensor:
    """Isotropic vectorial TV of each sample: ``(B, C, H, W)`` -> ``(B,)``."""
    return _pixel_norm(gradient(x)).flatten(1).sum(1)


def _per_sample(value: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """A scalar or ``(B,)`` value as a ``(B,)`` tensor on ``like``'s device and dtype."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if v.numel() == 1:
        v = v.expand(batch)
    if v.numel() != batch:
        raise ValueError(f"weight has {v.numel()} entries for a batch of {batch}")
    return v.clone()


def tv_objective(op: LinearOperator, x: Tensor, y: Tensor, weight: float | Tensor) -> Tensor:
    """``1/2 ||A x - y||^2 + weight * TV(x)`` per sample: ``(B,)`` (non-negativity not included)."""
    w = _per_sample(weight, x.shape[0], x)
    r = op.A(x) - y
    return 0.5 * r.flatten(1).pow(2).sum(1) + w * total_variation(x)


def _bshape(v: Tensor, ndim: int) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` with ``ndim`` dimensions, for broadcasting."""
    return v.reshape(-1, *([1] * (ndim - 1)))


def _norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


@dataclass
class _DualBlock:
    """One block ``K_i`` of ``K`` with the prox of ``sigma F_i^*``."""

    forward: Callable[[Tensor], Tensor]  # x -> K_i x
    adjoint: Callable[[Tensor], Tensor]  # d -> K_i^T d
    prox: Callable[[Tensor, Tensor], Tensor]  # (v, sigma (B,)) -> prox_{sigma F_i^*}(v)


PrimalProx = Callable[[Tensor, Tensor], Tensor]  # (v, tau (B,)) -> prox_{tau G}(v)


def _ball_projection(radius: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """Prox of the conjugate of ``radius * ||.||_{2,1}``: per-pixel projection onto the ball."""
    r = _bshape(radius, 5).clamp_min(torch.finfo(radius.dtype).tiny)

    def prox(v: Tensor, sigma: Tensor) -> Tensor:
        return v / torch.clamp(_pixel_norm(v) / r, min=1.0)

    return prox


def _data_prox(op: LinearOperator, y: Tensor) -> PrimalProx | None:
    """``prox_{tau 1/2||A . - y||^2}(v) = (I + tau A^T A)^{-1} (v + tau A^T y)`` where it is
    cheap: diagonal in Fourier for circular blurs (an operator with ``transfer_function()``),
    a projection for an un-padded masked Fourier operator with a 0/1 mask. ``None`` otherwise."""
    from luser_cli.operators.mri import MaskedFourier

    c, h, w = op.image_shape
    transfer = getattr(op, "transfer_function", None)
    if callable(transfer) and tuple(op.measurement_shape()) == (c, h, w):
        gram = transfer().abs().square()[:, : w // 2 + 1].to(device=y.device, dtype=y.dtype)
        aty_hat = torch.fft.rfft2(op.A_adjoint(y))

        def blur_prox(v: Tensor, tau: Tensor) -> Tensor:
            t = _bshape(tau, 4)
            spec = (torch.fft.rfft2(v) + t * aty_hat) / (1.0 + t * gram)
            return torch.fft.irfft2(spec, s=(h, w))

        return blur_prox
    if isinstance(op, MaskedFourier) and tuple(op.kspace_size) == (h, w):
        m = op.mask
        if not bool(torch.all((m == 0) | (m == 1))):
            return None
        aty = op.A_adjoint(y)  # A^T A = F^H M F is an orthogonal projection here

        def mri_prox(v: Tensor, tau: Tensor) -> Tensor:
            t = _bshape(tau, 4)
            u = v + t * aty
            return u - t / (1.0 + t) * op.AtA(u)

        return mri_prox
    return None


def robust_max(x: Tensor, quantile: float = 0.99) -> Tensor:
    """``(B, C, H, W)`` -> ``(B,)``: a robust maximum of each sample, the ``quantile`` of the
    per-pixel magnitude over channels (the maximum where that is zero, e.g. a tiny object on a
    zero background). Positively homogeneous: ``robust_max(c x) = c robust_max(x)``, ``c > 0``."""
    mag = torch.linalg.vector_norm(x, dim=1).flatten(1)
    k = min(mag.shape[1], max(1, math.ceil(quantile * mag.shape[1])))
    q = torch.kthvalue(mag, k, dim=1).values  # no size limit, unlike torch.quantile
    return torch.where(q > 0, q, mag.amax(dim=1))


def _pdhg(
    x: Tensor,
    blocks: list[_DualBlock],
    primal_prox: PrimalProx,
    step: Tensor,
    iterations: int,
    tol: float | None,
    progress: Callable[[int, int], None] | None,
) -> Tensor:
    """Chambolle–Pock: ``x' = prox_tG(x - t K^T d)``, ``d' = prox_sF*(d + s K(2x' - x))``.

    ``step`` is ``(tau, sigma)`` stacked as ``(2, B)``, with ``tau sigma ||K||^2 < 1``."""
    nd = x.ndim
    tau, sigma = step[0], step[1]
    t_x = _bshape(tau, nd)
    kx = [b.forward(x) for b in blocks]
    duals = [torch.zeros_like(v) for v in kx]
    s_d = [_bshape(sigma, v.ndim) for v in kx]
    ktd = torch.zeros_like(x)  # K^T d
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for k in range(1, iterations + 1):
        x_new = primal_prox(x - t_x * ktd, tau)
        kx_new = [b.forward(x_new) for b in blocks]
        d_new = [
            b.prox(d + s * (2.0 * kn - ko), sigma)
            for b, d, s, kn, ko in zip(blocks, duals, s_d, kx_new, kx, strict=True)
        ]
        if not bool(active.all()):  # converged samples keep their state
            keep = ~active
            x_new = torch.where(_bshape(keep, nd), x, x_new)
            kx_new = [_keep(keep, a, b) for a, b in zip(kx, kx_new, strict=True)]
            d_new = [_keep(keep, a, b) for a, b in zip(duals, d_new, strict=True)]
        if tol is not None:
            active = active & (_norm(x_new - x) > tol * _norm(x_new))
        x, kx, duals = x_new, kx_new, d_new
        if progress is not None:
            progress(k, iterations)
        if not bool(active.any()):
            break
        if k < iterations:
            ktd = sum(b.adjoint(d) for b, d in zip(blocks, duals, strict=True))
    return x


def _keep(keep: Tensor, old: Tensor, new: Tensor) -> Tensor:
    return torch.where(_bshape(keep, old.ndim), old, new)


def _steps(x: Tensor, radius: Tensor, norm_k_sq: float, balance: float) -> Tensor:
    """Per-sample ``(tau, sigma)`` as ``(2, B)``: ``tau sigma = 0.99 / ||K||^2`` and
    ``tau / sigma = balance^2 * scale(x) / radius``, the ratio of the primal variable's scale
    (robust max of the start image) to the dual's (the TV ball radius). Scale invariant."""
    ratio = torch.sqrt(robust_max(x) / radius.clamp_min(torch.finfo(x.dtype).tiny))
    ratio = torch.nan_to_num(balance * ratio, nan=1.0).clamp(1e-4, 1e4)
    base = math.sqrt(0.99 / norm_k_sq)
    return torch.stack((base * ratio, base / ratio))


@torch.no_grad()
def tv_reconstruct(
    op: LinearOperator,
    y: Tensor,
    weight: float | Tensor,
    iterations: int = 300,
    x0: Tensor | None = None,
    nonneg: bool = False,
    tol: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    generic: bool = False,
    balance: float = 1.0,
) -> Tensor:
    """Total-variation regularised least squares by PDHG (Chambolle–Pock).

    Args:
        op: the forward operator; ``op.norm_sq()`` sets the step sizes.
        y: measurements ``(B, *op.measurement_shape())``, in the operator's measurement units.
        weight: absolute TV weight ``lambda`` in ``1/2||Ax-y||^2 + lambda TV(x)`` (a float, or a
            ``(B,)`` tensor with one weight per sample). It carries the units of ``A^T y``; see
            :func:`luser_cli.classical.methods.absolute_tv_weight` for a weight relative to the
            data scale.
        iterations: maximum number of PDHG iterations (each costs about one ``A`` and one ``A^T``).
        x0: starting image ``(B, C, H, W)``; defaults to ``A^T y / ||A||^2``. Its intensity
            scale also sets the primal/dual step ratio, so start from an image on the right scale.
        nonneg: constrain ``x >= 0`` (CT attenuation, photographs; not for complex MRI images).
        tol: stop a sample once ``||x_{k+1} - x_k|| <= tol * ||x_{k+1}||``; stopped samples are
            frozen while the rest of the batch continues, so each result is independent of its
            batch companions. ``None`` runs all ``iterations``.
        progress: called as ``progress(k, iterations)`` after iteration ``k`` (1-based).
        generic: always dualise the data term, even where its prox is cheap.
        balance: multiplies the primal/dual step ratio ``sqrt(tau / sigma)`` (1 is tuned).

    Returns:
        ``(B, C, H, W)`` minimiser estimate in the image units of ``x0`` / ``A^T y``, same
        dtype and device as ``y``.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    norm_sq = float(op.norm_sq())
    if not math.isfinite(norm_sq) or norm_sq <= 0:
        raise ValueError(f"operator norm ||A||^2 = {norm_sq} is not a positive number")
    x = op.A_adjoint(y) / norm_sq if x0 is None else x0.to(dtype=y.dtype, device=y.device)
    if nonneg:
        x = x.clamp_min(0)
    w = _per_sample(weight, x.shape[0], x)
    if torch.any(w < 0) or not bool(torch.isfinite(w).all()):
        raise ValueError("TV weight must be finite and >= 0")

    data_prox = None if (generic or nonneg) else _data_prox(op, y)
    if data_prox is not None:
        # G = data term (exact prox), K = grad with ||K||^2 <= 8
        tv_block = _DualBlock(gradient, _neg_divergence, _ball_projection(w))
        step = _steps(x, w, GRAD_NORM_SQ, balance)
        return _pdhg(x, [tv_block], data_prox, step, iterations, tol, progress)

    # generic: K = [A; nu grad] with nu = sqrt(||A||^2 / 8), so ||K||^2 <= 2 ||A||^2
    nu = math.sqrt(norm_sq / GRAD_NORM_SQ)

    def data_dual_prox(v: Tensor, sigma: Tensor) -> Tensor:  # prox of F1*(q) = |q|^2/2 + <q, y>
        s = _bshape(sigma, v.ndim)
        return (v - s * y) / (1.0 + s)

    data_block = _DualBlock(op.A, op.A_adjoint, data_dual_prox)
    tv_block = _DualBlock(
        lambda v: nu * gradient(v), lambda d: -nu * divergence(d), _ball_projection(w / nu)
    )
    step = _steps(x, w / nu, 2.0 * norm_sq, balance)
    primal = _nonneg_prox if nonneg else _identity_prox
    return _pdhg(x, [data_block, tv_block], primal, step, iterations, tol, progress)


def _neg_divergence(d: Tensor) -> Tensor:
    return -divergence(d)


def _nonneg_prox(v: Tensor, tau: Tensor) -> Tensor:
    return v.clamp_min(0)


def _identity_prox(v: Tensor, tau: Tensor) -> Tensor:
    return v
