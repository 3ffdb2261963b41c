"""Spectral normalisation (Miyato et al. 2018) whose power iteration runs when *we* say so.

``torch.nn.utils.parametrizations.spectral_norm`` runs a power-iteration step every time the
weight is read in training mode. Inside a fixed-point solve the weight is read once per
iteration, and again when the backward pass recomputes the block, so the normalised weight
would drift between the forward solve and its implicit backward and the gradient would be for a
different function. Here the forward of the parametrization only *reads* the stored singular
vectors; :func:`power_iteration_` advances them, and models call it once per training step,
before the forward pass.
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
