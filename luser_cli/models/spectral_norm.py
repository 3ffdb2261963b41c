"""Spectral normalisation (Miyato et al. 2018) whose power iteration runs when *we* say so.

``torch.nn.utils.parametrizations.spectral_norm`` runs a power-iteration step every time the
weight is read in training mode. Inside a fixed-point solve the weight is read once per
iteration, and again when the backward pass recomputes the block, so the normalised weight
would drift between the forward solve and its implicit backward and the gradient would be for a
different function. Here the forward of the parametrization only *reads* the stored singular
vectors; :func:`power_iteration_` advances them, and models call it once per training step,
before the forward pass.

What it normalises, as Miyato et al.'s and PyTorch's spectral norm do: the largest singular
value of the kernel reshaped to an ``(out, in * kh * kw)`` matrix, *not* the operator norm of
the convolution. The convolution applies each kernel entry at nine shifted positions, so its
operator norm can be up to ``sqrt(kh * kw)`` = 3 times larger: measured 1.15-2.6 per layer at
initialisation and up to 2.8 after training, a product of about 2.3e3 over DEQ4IP's 17 layers.
So a spectrally normalised network is *not* 1-Lipschitz. Where a model needs a real bound,
:func:`conv_operator_norm` measures the convolution's own norm (power iteration on the
convolution and its transpose at a given image size) and :func:`lipschitz_bound` multiplies
them over a network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize


class SpectralNorm(nn.Module):
    """Parametrization ``W -> W / sigma(W)``, ``sigma`` estimated from buffers ``u``, ``v``.

    ``W`` is viewed as a matrix ``(out, in * kh * kw)`` as in Miyato et al.; the estimate
    ``sigma = u^T W v`` is differentiable in ``W`` with ``u``, ``v`` held constant.
    """

    def __init__(self, weight: Tensor, init_iterations: int = 15, eps: float = 1e-12) -> None:
        super().__init__()
        mat = weight.detach().flatten(1)
        self.eps = eps
        u = F.normalize(torch.randn(mat.shape[0], dtype=mat.dtype), dim=0, eps=eps)
        v = F.normalize(torch.randn(mat.shape[1], dtype=mat.dtype), dim=0, eps=eps)
        self.register_buffer("u", u)
        self.register_buffer("v", v)
        self._iterate(mat, init_iterations)

    @torch.no_grad()
    def _iterate(self, mat: Tensor, iterations: int) -> None:
        u, v = self.u, self.v
        for _ in range(iterations):
            v = F.normalize(mat.t() @ u, dim=0, eps=self.eps)
            u = F.normalize(mat @ v, dim=0, eps=self.eps)
        self.u.copy_(u)
        self.v.copy_(v)

    def forward(self, weight: Tensor) -> Tensor:
        # sigma in float32 whatever the autocast state (bf16 matmul + fp32 dot would not mix).
        with torch.autocast(weight.device.type, enabled=False):
            sigma = torch.dot(self.u, torch.mv(weight.flatten(1), self.v))
        return weight / sigma


def spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Register :class:`SpectralNorm` on ``module.<name>`` and return the module."""
    parametrize.register_parametrization(module, name, SpectralNorm(getattr(module, name)))
    return module


def sn_conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    """A spectrally normalised 3x3 convolution with padding 1."""
    return spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias))  # type: ignore[return-value]


@torch.no_grad()
def power_iteration_(model: nn.Module, iterations: int = 1) -> None:
    """Advance the singular-vector estimate of every :class:`SpectralNorm` in ``model``."""
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in module.parametrizations.values():
            for p in plist:
                if isinstance(p, SpectralNorm):
                    p._iterate(plist.original.flatten(1), iterations)


@torch.no_grad()
def conv_operator_norm(
    conv: nn.Conv2d, size: int | tuple[int, int], iterations: int = 50, seed: int = 0
) -> float:
    """The operator norm (largest singular value) of ``conv`` as a linear map on images of
    ``size`` (bias ignored; its padding, stride and dilation as configured), by power
    iteration on ``conv^T conv`` (``conv_transpose2d`` is the exact adjoint). With zero
    padding it grows with the size towards the norm on the infinite grid; a few dozen pixels
    are enough for 3x3 kernels. Uses the current (normalised) weight."""
    h, w = (size, size) if isinstance(size, int) else size
    weight = conv.weight.detach().double()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, conv.in_channels, h, w, generator=gen, dtype=torch.float64)

    def forward(t: Tensor) -> Tensor:
        return F.conv2d(t, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    shape = forward(x).shape
    sigma = 0.0
    for _ in range(iterations):
        x = x / torch.linalg.vector_norm(x).clamp_min(1e-300)
        y = forward(x)
        sigma = float(torch.linalg.vector_norm(y))
        extra = (h - _transposed_size(shape[2], conv, 0), w - _transposed_size(shape[3], conv, 1))
        x = F.conv_transpose2d(
            y, weight, None, conv.stride, conv.padding, extra, conv.groups, conv.dilation
        )
    return sigma


def _transposed_size(n: int, conv: nn.Conv2d, axis: int) -> int:
    """Output size of ``conv_transpose2d`` without output padding, along ``axis``."""
    stride, pad, dil, k = (
        conv.stride[axis],
        conv.padding[axis],
        conv.dilation[axis],
        conv.kernel_size[axis],
    )
    return (n - 1) * stride - 2 * pad + dil * (k - 1) + 1


@torch.no_grad()
def lipschitz_bound(module: nn.Module, size: int, iterations: int = 50) -> dict[str, float]:
    """An upper bound on the Lipschitz constant of a chain of convolutions, 1-Lipschitz
    activations and affine normalisations: the product of every convolution's operator norm
    (:func:`conv_operator_norm`) and every BatchNorm's largest ``|gamma| / sqrt(var + eps)``
    (eval mode). Also returns the product of the reshaped-kernel norms that spectral
    normalisation controls, for comparison. Valid for feed-forward chains only (a skip
    connection adds 1)."""
    product = 1.0
    reshaped = 1.0
    layers = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            product *= conv_operator_norm(m, size, iterations)
            reshaped *= float(torch.linalg.matrix_norm(m.weight.detach().flatten(1).double(), 2))
            layers += 1
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            gain = m.weight.detach().abs() if m.weight is not None else torch.ones(1)
            product *= float((gain / torch.sqrt(m.running_var + m.eps)).max())
    return {"bound": product, "reshaped_kernel_product": reshaped, "convolutions": layers}
