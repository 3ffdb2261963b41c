"""Filtered back-projection for :class:`~luser_cli.operators.radon.ParallelBeamRadon`.

``x = pi / (n_angles h^2) * A^T(q)``, ``q`` the sinogram filtered along the detector with the
discrete ramp filter of Kak & Slaney (eq. 61; the one scikit-image's ``iradon`` uses): built in
the spatial domain on a zero-padded grid (the next power of two >= 2 n_det, at least 64), which
avoids the DC offset of sampling ``|nu|`` directly, times an apodisation window. The
back-projection is the operator's exact adjoint ``A^T``: for a bin spacing ``Delta`` and pixel
size ``h`` it is ``h^2 / Delta`` times the usual sum over angles of the interpolated projections,
while data ramp-filtered per metre are those filtered per bin divided by ``Delta``; hence the
constant, which does not depend on ``Delta``.
The result is in image units (``FBP(A x) ~ x``), differentiable in ``y``, and assumes the angles
spread evenly over ``[0, pi)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from luser_cli.errors import ConfigError, InputError
from luser_cli.operators.base import LinearOperator
from luser_cli.operators.radon import CTGeometry

FILTERS: tuple[str, ...] = ("ramp", "hann", "shepp-logan", "cosine", "hamming")


def padded_length(n_detectors: int) -> int:
    """FFT length: the next power of two >= ``2 n_detectors``, at least 64 (as skimage)."""
    return max(64, 1 << math.ceil(math.log2(2 * n_detectors)))


def fourier_filter(
    size: int,
    filter: str = "hann",
    frequency_scaling: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The filter's one-sided response on ``size // 2 + 1`` rfft frequencies, in bin units.

    Ramp: the DFT of Kak & Slaney's band-limited ramp kernel (``1/4`` at 0, ``-1/(pi n)^2`` at odd
    ``n``), ~``|nu|`` cycles per bin. Windows (``nu / nu_Nyquist = w`` in [0, 1], scaled by
    ``frequency_scaling`` as in ODL): hann ``cos^2(pi w / 2)``, shepp-logan ``sinc(w / 2)``,
    cosine ``cos(pi w / 2)``, hamming ``0.54 + 0.46 cos(pi w)``; zero above
    ``frequency_scaling * nu_Nyquist``.
    """
    if filter not in FILTERS:
        raise ConfigError(f"unknown FBP filter {filter!r}; choose one of: {', '.join(FILTERS)}")
    if not 0 < frequency_scaling <= 1:
        raise ConfigError(f"FBP frequency_scaling must be in (0, 1], got {frequency_scaling}")
    n = torch.arange(size, dtype=torch.float64, device=device)
    distance = torch.minimum(n, size - n)  # circular lag
    kernel = torch.where(distance % 2 == 1, -1 / (math.pi * distance) ** 2, 0.0)
    kernel[0] = 0.25
    ramp = torch.fft.rfft(kernel).real
    w = torch.fft.rfftfreq(size, dtype=torch.float64, device=device) * 2 / frequency_scaling
    if filter == "hann":
        window = torch.cos(math.pi * w / 2) ** 2
    elif filter == "shepp-logan":
        window = torch.sinc(w / 2)
    elif filter == "cosine":
        window = torch.cos(math.pi * w / 2)
    elif filter == "hamming":
        window = 0.54 + 0.46 * torch.cos(math.pi * w)
    else:
        window = torch.ones_like(w)
    return torch.where(w <= 1, ramp * window, 0.0).to(dtype)


def filter_sinogram(y: Tensor, filter: str = "hann", frequency_scaling: float = 1.0) -> Tensor:
    """Filter ``(..., n_det)`` projections along the last axis (zero-padded FFT), bin units."""
    n_det = y.shape[-1]
    size = padded_length(n_det)
    response = fourier_filter(size, filter, frequency_scaling, y.dtype, y.device)
    spectrum = torch.fft.rfft(y, n=size) * response
    return torch.fft.irfft(spectrum, n=size)[..., :n_det]


def fbp_scale(geometry: CTGeometry) -> float:
    """The constant of ``FBP(y) = fbp_scale * A^T(filtered y)``: ``pi / (n_angles h^2)``."""
    return math.pi / (geometry.n_angles * geometry.pixel_size**2)


def filtered_back_projection(
    op: LinearOperator, y: Tensor, filter: str = "hann", frequency_scaling: float = 1.0
) -> Tensor:
    """FBP: ``(B, 1, n_angles, n_det)`` sinograms in metres -> ``(B, 1, N, N)`` images.

    ``op`` is a parallel-beam Radon operator: anything with a :class:`CTGeometry` ``geometry``
    and that geometry's ``A_adjoint`` (:class:`~luser_cli.operators.radon.ParallelBeamRadon`,
    or the memory probe's stand-in for it). ``filter``: ramp, hann (default), shepp-logan,
    cosine or hamming; ``frequency_scaling`` in (0, 1] cuts the filter off at that fraction of
    the Nyquist frequency (ODL's convention).
    """
    g = getattr(op, "geometry", None)
    if not isinstance(g, CTGeometry):
        raise ConfigError(f"FBP needs a parallel-beam Radon operator, got {type(op).__name__}")
    shape = op.measurement_shape()
    if y.dim() != 4 or tuple(y.shape[1:]) != shape:
        expected = ", ".join(map(str, shape))
        raise InputError(f"FBP expects sinograms of shape (B, {expected}), got {tuple(y.shape)}")
    q = filter_sinogram(y, filter, frequency_scaling)
    return op.A_adjoint(q) * fbp_scale(g)
