"""Single-coil MRI operator: centred orthonormal 2D FFT times a k-space column mask.

``A = M F P``: ``P`` zero-pads the ``(H, W)`` image centred into the ``(Hk, Wk)`` k-space grid
(offsets ``((Hk - H) // 2, (Wk - W) // 2)``, the transpose of fastMRI's ``center_crop``), ``F`` is
the centred orthonormal DFT ``fftshift(fft2(ifftshift(z), norm="ortho"))`` and ``M`` multiplies
every k-space column by the mask. The adjoint is ``A^H = P^T F^H M``, i.e. fastMRI's
``ifft2c`` (``fftshift(ifft2(ifftshift(.)))``) of the masked k-space, centre-cropped.

``ifftshift`` before and ``fftshift`` after the FFT (and the reverse for the inverse) is what
puts the image centre and the DC coefficient at index ``n // 2``; for odd sizes the two shifts
differ, and swapping them would break the adjoint, so the tests cover odd sizes.

The operator does not shift data: with ``c = n // 2`` and ``w = exp(-2 pi i / n)`` the centred
DFT is ``C[k, m] = w^((k - c)(m - c)) / sqrt(n) = w^(c^2) d[k] (F[k, m] / sqrt(n)) d[m]`` with
``d[j] = w^(-c j)``, so ``fft2c(z) = (phase_out * fft2(phase_in * z))`` with separable unit
phases (a +-1 checkerboard for even sizes). That replaces four shift copies by two multiplies,
one of them fused with the mask (~30% faster on CPU); :func:`fft2c` is the shift form.

Images are real ``(B, 2, H, W)`` (real, imaginary); measurements are real ``(B, 2, Hk, Wk)``,
zero outside the sampled columns. Internally the data are complex (``complex64`` for float32
inputs, ``complex128`` for float64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from luser_cli.errors import ConfigError, InputError
from luser_cli.operators.base import LinearOperator

_DIMS = (-2, -1)


def fft2c(z: Tensor) -> Tensor:
    """Centred orthonormal 2D DFT over the last two axes of a complex tensor."""
    return torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(z, dim=_DIMS), norm="ortho"), dim=_DIMS
    )


def ifft2c(k: Tensor) -> Tensor:
    """Inverse (= adjoint) of :func:`fft2c`."""
    return torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(k, dim=_DIMS), norm="ortho"), dim=_DIMS
    )


def _centring_phase(n: int) -> Tensor:
    """``d[j] = exp(2 pi i ((n // 2) j mod n) / n)``, ``j < n``: a real ``(n, 2)`` float64 view."""
    j = torch.arange(n)
    turns = torch.remainder(j * (n // 2), n).to(torch.float64) / n
    return torch.view_as_real(torch.polar(torch.ones_like(turns), 2.0 * math.pi * turns))


class MaskedFourier(LinearOperator):
    """``y = mask * fft2c(zero_pad(x))`` with one column mask per sample (or one for all).

    Args:
        image_size: ``(H, W)`` of the images.
        mask: ``(Wk,)``, ``(N, Wk)`` or ``(N, 1, 1, Wk)`` column mask (bool or 0/1 floats); N = 1
            (shared) or the batch size (one mask per sample). Stored as the float buffer
            ``mask`` of shape ``(N, 1, 1, Wk)``.
        kspace_size: ``(Hk, Wk)`` k-space grid, at least ``image_size`` (default: ``image_size``).
            fastMRI knee files have ``(640, ~368)`` k-space for ``320 x 320`` images.
    """

    mask: Tensor

    def __init__(
        self,
        image_size: tuple[int, int],
        mask: Tensor,
        kspace_size: tuple[int, int] | None = None,
    ) -> None:
        h, w = (int(s) for s in image_size)
        super().__init__((2, h, w))
        hk, wk = (h, w) if kspace_size is None else (int(s) for s in kspace_size)
        if hk < h or wk < w:
            raise ConfigError(f"k-space size {hk}x{wk} is smaller than the image size {h}x{w}")
        self.kspace_size: tuple[int, int] = (hk, wk)
        mask = torch.as_tensor(mask)
        if mask.dim() == 1:
            mask = mask[None]
        if mask.dim() == 4 and mask.shape[1:3] == (1, 1):
            mask = mask[:, 0, 0]
        if mask.dim() != 2 or mask.shape[-1] != wk or mask.shape[0] < 1:
            raise ConfigError(
                f"MRI mask must be (Wk,) or (N, Wk) with Wk = {wk} k-space columns, "
                f"got shape {tuple(mask.shape)}"
            )
        if not mask.is_floating_point():
            mask = mask.to(torch.float32)
        self.register_buffer("mask", mask.detach().clone()[:, None, None, :])
        top, left = (hk - h) // 2, (wk - w) // 2
        #: F.pad widths (left, right, top, bottom) that place the image in the k-space grid.
        self._pad = (left, wk - w - left, top, hk - h - top)
        # centring phases d_h (Hk,), d_w (Wk,) as real views (complex buffers do not survive
        # Module.to(float dtype)); not saved in state_dict.
        self.register_buffer("phase_h", _centring_phase(hk), persistent=False)
        self.register_buffer("phase_w", _centring_phase(wk), persistent=False)

    @property
    def num_masks(self) -> int:
        return int(self.mask.shape[0])

    def measurement_shape(self) -> tuple[int, ...]:
        return (2, *self.kspace_size)

    def _check(self, t: Tensor, shape: tuple[int, ...], what: str) -> None:
        if t.dim() != 4 or tuple(t.shape[1:]) != shape:
            raise InputError(
                f"MRI operator expects {what} of shape (B, {', '.join(map(str, shape))}), "
                f"got {tuple(t.shape)}"
            )
        if self.num_masks not in (1, t.shape[0]):
            raise InputError(
                f"MRI operator holds {self.num_masks} masks but got a batch of {t.shape[0]}"
            )

    def _phases(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``phase_in`` ``(H, W)`` (on the image window) and ``phase_out * mask`` ``(N, Hk, Wk)``,
        complex, for real ``dtype`` data."""
        d_h = torch.view_as_complex(self.phase_h.to(dtype))
        d_w = torch.view_as_complex(self.phase_w.to(dtype))
        left, _, top, _ = self._pad
        h, w = self.image_shape[1:]
        phase_in = d_h[top : top + h, None] * d_w[None, left : left + w]
        # w_h^(c_h^2) w_w^(c_w^2) = conj(d_h[c_h] d_w[c_w])
        const = (d_h[self.kspace_size[0] // 2] * d_w[self.kspace_size[1] // 2]).conj()
        phase_out = (d_h * const)[:, None] * d_w[None, :] * self.mask[:, 0].to(dtype)
        return phase_in, phase_out

    def _A(self, x: Tensor) -> Tensor:
        self._check(x, self.image_shape, "images")
        phase_in, phase_out = self._phases(x.dtype)
        z = torch.complex(x[:, 0], x[:, 1]) * phase_in
        if any(self._pad):
            z = F.pad(z, self._pad)
        k = torch.fft.fft2(z, norm="ortho") * phase_out
        return torch.stack((k.real, k.imag), dim=1)

    def _A_adjoint(self, y: Tensor) -> Tensor:
        self._check(y, self.measurement_shape(), "k-space")
        phase_in, phase_out = self._phases(y.dtype)
        z = torch.fft.ifft2(torch.complex(y[:, 0], y[:, 1]) * phase_out.conj(), norm="ortho")
        left, _, top, _ = self._pad
        h, w = self.image_shape[1:]
        z = z[..., top : top + h, left : left + w] * phase_in.conj()
        return torch.stack((z.real, z.imag), dim=1)

    def restrict(self, y: Tensor) -> Tensor:
        """Zero ``(B, 2, Hk, Wk)`` k-space outside the sampled columns: ``y * mask``."""
        return y * self.mask.to(y.dtype)

    @torch.no_grad()
    def norm_sq(self, iterations: int = 30, seed: int = 0) -> float:
        """``||A||_2^2``, exact (the arguments are ignored); cached.

        ``A^T A = I_H (x) G`` with ``G = P_c^T F_c^H diag(m^2) F_c P_c`` the ``W x W`` column
        Gram matrix, so the norm is the largest eigenvalue of ``G`` over the masks. It is 1
        when ``Wk == W`` and any column is sampled, and also whenever ``W + sampled > Wk``.
        Needs real (not fake) mask data.
        """
        if self._norm_sq is None:
            w = self.image_shape[2]
            wk = self.kspace_size[1]
            left = self._pad[0]
            basis = torch.zeros(w, wk, dtype=torch.complex128)
            basis[torch.arange(w), left + torch.arange(w)] = 1
            rows = torch.fft.fftshift(
                torch.fft.fft(torch.fft.ifftshift(basis, dim=-1), norm="ortho"), dim=-1
            )  # (W, Wk): row i is the 1D transform of the i-th unit column
            m2 = self.mask[:, 0, 0].detach().to("cpu", torch.float64) ** 2  # (N, Wk)
            gram = (rows.conj()[None] * m2[:, None, :]) @ rows.T  # (N, W, W), Hermitian
            self._norm_sq = float(torch.linalg.eigvalsh(gram).max())
        return self._norm_sq
