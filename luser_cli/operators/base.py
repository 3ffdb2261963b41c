"""The interface every forward operator implements.

An operator is an ``nn.Module`` whose state (kernel, angles, masks) lives in buffers, so
``.to(device, dtype)`` moves it and ``state_dict`` records it. Images are real tensors of shape
``(B, C, H, W)``; complex images use two channels (real, imaginary). The measurement shape is
operator specific and given by :meth:`LinearOperator.measurement_shape`.

Every operator is linear and provides an exact adjoint: ``<A x, y> == <x, A_adjoint y>`` to
rounding error, and ``A_adjoint`` is itself differentiable (it is used inside learned models).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearOperator(nn.Module):
    """A linear forward operator ``A`` with its exact adjoint.

    Subclasses implement :meth:`A`, :meth:`A_adjoint` and :meth:`measurement_shape`.
    ``calls_A`` / ``calls_A_adjoint`` count batched applications, so a model can report how
    often it used the physics (the paper's argument against DEQ4IP is this count).
    """

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        #: ``(C, H, W)`` of the images this operator acts on.
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.calls_A = 0
        self.calls_A_adjoint = 0
        self._norm_sq: float | None = None

    # -- to implement -------------------------------------------------------------------------
    def _A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _A_adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def measurement_shape(self) -> tuple[int, ...]:
        """Shape of one measurement, without the batch dimension."""
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:
        """Forward operator: ``x`` ``(B, *image_shape)`` -> ``(B, *measurement_shape)``."""
        self.calls_A += 1
        if torch.is_autocast_enabled(x.device.type):  # physics always runs in float32
            with torch.autocast(x.device.type, enabled=False):
                return self._A(x.float())
        return self._A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        """Apply the exact adjoint. ``y``: ``(B, *measurement_shape)`` -> ``(B, *image_shape)``."""
        self.calls_A_adjoint += 1
        if torch.is_autocast_enabled(y.device.type):
            with torch.autocast(y.device.type, enabled=False):
                return self._A_adjoint(y.float())
        return self._A_adjoint(y)

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    def AtA(self, x: Tensor) -> Tensor:
        """``A^T A x``, the normal operator."""
        return self.A_adjoint(self.A(x))

    def reset_counters(self) -> None:
        self.calls_A = 0
        self.calls_A_adjoint = 0

    @torch.no_grad()
    def norm_sq(self, iterations: int = 30, seed: int = 0) -> float:
        """Largest eigenvalue of ``A^T A`` (``||A||_2^2``), by seeded power iteration; cached.

        Computed once per operator instance in float64 on the operator's device. Used to set
        step sizes (gradient steps, PDHG) and to scale the adjoint initial estimate.
        """
        if self._norm_sq is None:
            calls = (self.calls_A, self.calls_A_adjoint)
            dtype = torch.float64
            device = self._device()
            g = torch.Generator(device="cpu").manual_seed(seed)
            x = torch.randn((1, *self.image_shape), generator=g, dtype=dtype).to(device)
            x = x / x.norm()
            value = 0.0
            for _ in range(iterations):
                z = self.AtA(x.to(self._buffer_dtype())).to(dtype)
                value = float(torch.sum(z * x))
                x = z / z.norm().clamp_min(1e-30)
            self._norm_sq = value
            self.calls_A, self.calls_A_adjoint = calls
        return self._norm_sq

    def _device(self) -> torch.device:
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def _buffer_dtype(self) -> torch.dtype:
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype
        return torch.get_default_dtype()

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, measurement_shape={self.measurement_shape()}"


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Real inner product over all but the batch dimension: ``(B, ...) x (B, ...) -> (B,)``."""
    return (a * b).flatten(1).sum(1)
