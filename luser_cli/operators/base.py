"""The interface every forward operator implements.

An operator is an ``nn.Module`` whose state (kernel, angles, masks) lives in buffers, so
``.to(device, dtype)`` moves it and ``state_dict`` records it. Images are real tensors of shape
``(B, C, H, W)``; complex images use two channels (real, imaginary). The measurement shape is
operator specific and given by :meth:`LinearOperator.measurement_shape`.

Every operator is linear and provides an exact adjoint: ``<A x, y> == <x, A_adjoint y>`` to
rounding error (:meth:`LinearOperator.adjointness_test`), and ``A_adjoint`` is itself
differentiable (it is used inside learned models).

The operator owns the whole measurement, as deepinv's ``forward = sensor(noise(A(x)))``:
:meth:`LinearOperator.measure` is ``restrict(noise(A x))`` with the operator's
:attr:`~LinearOperator.noise` model and its :meth:`~LinearOperator.restrict` to the measured
support (the identity but for MRI, whose noisy k-space is zeroed outside the sampled columns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from luser_cli.errors import InputError
from luser_cli.operators.noise import NoiseModel

#: One generator for the whole batch, or one per batch item (see :meth:`LinearOperator.measure`).
Generators = torch.Generator | Sequence[torch.Generator] | None


class LinearOperator(nn.Module):
    """A linear forward operator ``A`` with its exact adjoint.

    Subclasses implement :meth:`A`, :meth:`A_adjoint` and :meth:`measurement_shape`, and may
    override :meth:`restrict`. ``calls_A`` / ``calls_A_adjoint`` count batched applications, so
    a model can report how often it used the physics (the paper's argument against DEQ4IP is
    this count).

    ``noise``: the measurement noise model applied by :meth:`measure` (default: the identity,
    noise-free; :func:`luser_cli.physics.build_operator` sets the task's). It holds no tensors,
    so it adds nothing to ``state_dict``.
    """

    noise: NoiseModel

    def __init__(self, image_shape: tuple[int, int, int], noise: NoiseModel | None = None) -> None:
        super().__init__()
        #: ``(C, H, W)`` of the images this operator acts on.
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in image_shape)  # type: ignore[assignment]
        self.noise = noise if noise is not None else NoiseModel()
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

    def restrict(self, y: Tensor) -> Tensor:
        """Keep the measured support of ``y`` ``(B, *measurement_shape)``, same shape and units:
        the identity here; MRI zeroes the unsampled k-space columns."""
        return y

    def measure(
        self,
        x: Tensor,
        generator: Generators = None,
        *,
        noise: NoiseModel | None = None,
    ) -> Tensor:
        """Simulated measurements ``restrict(noise(A x))``: ``x`` ``(B, *image_shape)`` ->
        ``(B, *measurement_shape)``, in the measurement's units (e.g. metres for CT).

        Args:
            x: the images.
            generator: the noise's random source: one generator for the whole batch (the noise
                of the batch is one draw), or a sequence of ``B`` generators, item ``i``'s noise
                drawn from ``generator[i]`` (independent of batching and sharding); None: the
                global generator.
            noise: this call's noise model instead of :attr:`noise` (for callers that keep the
                noise apart, as :func:`luser_cli.physics.simulate`).

        ``A`` is applied once (``calls_A`` + 1). The draws are those of ``noise(A x,
        generator)`` on the whole batch, or on each item's ``(1, ...)`` slice for a sequence.
        """
        model = self.noise if noise is None else noise
        clean = self.A(x)
        if generator is None or isinstance(generator, torch.Generator):
            noisy = model(clean, generator)
        else:
            generators = list(generator)
            if len(generators) != clean.shape[0]:
                raise InputError(
                    f"measure got {len(generators)} generators for a batch of {clean.shape[0]}"
                )
            noisy = torch.cat([model(clean[i : i + 1], g) for i, g in enumerate(generators)])
        return self.restrict(noisy)

    def reset_counters(self) -> None:
        self.calls_A = 0
        self.calls_A_adjoint = 0

    @torch.no_grad()
    def norm_sq(self, iterations: int = 30, seed: int = 0) -> float:
        """Largest eigenvalue of ``A^T A`` (``||A||_2^2``), by seeded power iteration; cached.

        Computed once per operator instance on the operator's device: exactly ``iterations``
        steps of :func:`power_iteration`, the iterate kept in float64 and ``A^T A`` applied in
        the buffers' dtype. Used to set step sizes (gradient steps, PDHG) and to scale the
        adjoint initial estimate. Not counted in ``calls_A`` / ``calls_A_adjoint``.
        """
        if self._norm_sq is None:
            calls = (self.calls_A, self.calls_A_adjoint)
            self._norm_sq = power_iteration(
                self.AtA,
                self.image_shape,
                iterations=iterations,
                seed=seed,
                device=self._device(),
                dtype=self._buffer_dtype(),
                iterate_dtype=torch.float64,
            )
            self.calls_A, self.calls_A_adjoint = calls
        return self._norm_sq

    @torch.no_grad()
    def adjointness_test(
        self, generator: torch.Generator | None = None, *, batch: int = 1
    ) -> float:
        """Relative error of the adjoint: the largest over a random batch of
        ``|<A x, y> - <x, A^T y>| / max(|<A x, y>|, 1e-3 ||A x|| ||y||)``.

        ``x`` ``(batch, *image_shape)`` and ``y`` ``(batch, *measurement_shape)`` are standard
        normal, drawn on the CPU from ``generator`` (None: the global generator) in the buffers'
        dtype, then moved to the operator's device; the inner products are taken in float64.
        The floor ``1e-3 ||A x|| ||y||`` (Cauchy-Schwarz bounds ``|<A x, y>|`` by
        ``||A x|| ||y||``) keeps a nearly orthogonal draw from inflating the ratio. Around 1e-16
        (float64) or 1e-7 (float32) for an exact adjoint. ``batch``: an MRI operator holding
        ``N > 1`` per-sample masks needs ``batch = N``. Not counted in the call counters.
        """
        calls = (self.calls_A, self.calls_A_adjoint)
        dtype, device = self._buffer_dtype(), self._device()
        x = torch.randn((batch, *self.image_shape), generator=generator, dtype=dtype)
        y = torch.randn((batch, *self.measurement_shape()), generator=generator, dtype=dtype)
        x, y = x.to(device), y.to(device)
        ax, aty = self.A(x), self.A_adjoint(y)
        self.calls_A, self.calls_A_adjoint = calls
        lhs, rhs = dot(ax.double(), y.double()), dot(x.double(), aty.double())
        scale = ax.double().flatten(1).norm(dim=1) * y.double().flatten(1).norm(dim=1)
        error = (lhs - rhs).abs() / torch.maximum(lhs.abs(), 1e-3 * scale)
        return float(error.max())

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


@torch.no_grad()
def power_iteration(
    normal: Callable[[Tensor], Tensor],
    image_shape: Sequence[int],
    *,
    iterations: int = 30,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    iterate_dtype: torch.dtype | None = None,
    rtol: float | None = None,
) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite ``normal`` (``A^T A``), by
    seeded power iteration: the Rayleigh quotient ``<A^T A x, x>`` of the last iterate.

    The start is a standard normal ``(1, *image_shape)`` drawn in float64 on the CPU from
    ``torch.Generator().manual_seed(seed)`` and normalised there, then moved to ``device`` in
    ``iterate_dtype``. Each step applies ``normal`` to the iterate cast to ``dtype``, takes the
    Rayleigh quotient in float64 and renormalises in ``iterate_dtype`` (default: ``dtype``).
    Runs ``iterations`` steps, or stops earlier once the quotient moves by at most
    ``rtol * |quotient|`` between steps (None: never). Units: those of ``A`` squared. The
    operators' two callers: :meth:`LinearOperator.norm_sq` (float64 iterate, all steps) and
    the Radon transform's (iterate in the working dtype, ``rtol`` 1e-9 / 1e-6).
    """
    iterate_dtype = dtype if iterate_dtype is None else iterate_dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((1, *image_shape), generator=g, dtype=torch.float64)
    x = (x / x.norm()).to(device=device, dtype=iterate_dtype)
    value = 0.0
    for _ in range(iterations):
        z = normal(x.to(dtype)).to(iterate_dtype)
        previous, value = value, float(torch.sum(z.double() * x.double()))
        x = z / z.norm().clamp_min(1e-30)
        if rtol is not None and abs(value - previous) <= rtol * abs(value):
            break
    return value
