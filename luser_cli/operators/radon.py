"""Parallel-beam CT: the geometry (LoDoPaB-CT, scaled to any image size) and the Radon transform.

Coordinates follow ODL, with which LoDoPaB-CT was made, so reconstructions of real LoDoPaB
observations come out oriented like LoDoPaB's ``ground_truth`` arrays:

* an ``(N, N)`` image covers ``[-L/2, L/2]^2`` metres (``L = image_extent``, 0.26 m); array index
  ``[i, j]`` is the point ``(x_i, y_j)``, ``x`` growing with the row index ``i`` and ``y`` with the
  column index ``j``; pixel centres are at ``-L/2 + (k + 0.5) L / N``;
* the projection at angle ``theta`` and detector coordinate ``s`` is the line integral of the image
  over the points ``s (cos theta, sin theta) + t (-sin theta, cos theta)``, ``t`` real;
* detector bins are centred at ``-D/2 + (k + 0.5) D / n_detectors`` (``D = detector_extent``).

Images are unitless (CT: 1 = ``mu_max``) and line integrals are in metres, so the sinogram of a
normalised image is in metres, like LoDoPaB's post-log data.

Discretisation: a ray-driven projector in two gathers, so that ``A`` and its exact transpose are
both cheap on a CPU (a plain ray-driven projector needs a scatter for one of them):

1. ``S``: for each angle, "intermediate" rays ``|d| h`` apart (``h`` the pixel size; ``d`` is
   ``cos theta`` when the ray advances one column per step, ``sin theta`` when it advances one row)
   are integrated as in Joseph's method: one sample per column (row), linear interpolation along
   the row (column), times the step ``h / |d|``. Consecutive rays then sample points exactly one
   pixel apart along the interpolated axis, so ``S^T`` is again a linear-interpolation gather.
2. ``R``: cubic (Keys, a = -0.75) interpolation of the ray sums at the detector positions; ``R^T``
   is a small 1D scatter.

Sinograms agree with scikit-image's ``radon`` to ~1% (relative L2, Shepp-Logan at 65 px) and
``A_adjoint`` is the exact transpose of ``A``. Two interchangeable backends compute the same
operator: chunked ``grid_sample`` calls (any size, CPU or CUDA, lean in memory, and they run on
fake tensors under ``FakeTensorMode``) and cached sparse CSR matrices (small images; several times
faster on a CPU).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

from luser_cli.errors import ConfigError, InputError
from luser_cli.operators.base import LinearOperator, power_iteration

#: Side of LoDoPaB's square image domain, metres.
LODOPAB_IMAGE_EXTENT = 0.26
#: LoDoPaB's detector length, metres: the diameter of the image's circumscribed circle,
#: ``2 * 0.13 * sqrt(2) = 2 * 0.18385`` (ODL's ``parallel_beam_geometry``).
LODOPAB_DETECTOR_EXTENT = LODOPAB_IMAGE_EXTENT * math.sqrt(2.0)
LODOPAB_SIZE = 362
LODOPAB_DETECTORS = 513

Backend = Literal["auto", "sparse", "grid"]

# grid_sampler codes (aten): interpolation 2 = bicubic; padding 0 = zeros.
_BICUBIC, _ZEROS = 2, 0
_CUBIC_A = -0.75  # PyTorch's bicubic kernel
# Temporary memory per grid_sample chunk (grid + samples), bytes.
_CHUNK_BYTES = 48 * 2**20
# "auto" uses the sparse matrices up to this many non-zeros in S (about 2 n_angles N^2): at 200
# angles up to ~140 x 140 images. S and S^T take 8 bytes per non-zero each in float32 (int32
# indices): ~26 MB at 64 x 64, ~106 MB at 128 x 128.
_SPARSE_MAX_NNZ = 8_000_000
_SPARSE_CACHE_SIZE = 4


@dataclass(frozen=True)
class CTGeometry:
    """A 2D parallel-beam geometry (conventions in the module docstring).

    ``angles`` in radians, extents in metres.
    """

    image_size: int
    angles: tuple[float, ...]
    n_detectors: int
    image_extent: float = LODOPAB_IMAGE_EXTENT
    detector_extent: float = LODOPAB_DETECTOR_EXTENT

    def __post_init__(self) -> None:
        object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
        if int(self.image_size) != self.image_size or self.image_size < 2:
            raise ConfigError(f"CT image size must be an integer >= 2, got {self.image_size}")
        if int(self.n_detectors) != self.n_detectors or self.n_detectors < 1:
            raise ConfigError(
                f"CT detector count must be a positive integer, got {self.n_detectors}"
            )
        if not self.angles or not all(math.isfinite(a) for a in self.angles):
            raise ConfigError("CT geometry needs at least one angle, all finite")
        if not (self.image_extent > 0 and self.detector_extent > 0):
            raise ConfigError(
                f"CT extents must be positive, got image {self.image_extent} m, "
                f"detector {self.detector_extent} m"
            )

    @property
    def n_angles(self) -> int:
        return len(self.angles)

    @property
    def pixel_size(self) -> float:
        """Pixel side, metres."""
        return self.image_extent / self.image_size

    @property
    def detector_spacing(self) -> float:
        """Detector bin width, metres."""
        return self.detector_extent / self.n_detectors

    @property
    def detector_positions(self) -> Tensor:
        """Bin centres, metres: float64 ``(n_detectors,)``."""
        k = torch.arange(self.n_detectors, dtype=torch.float64)
        return -self.detector_extent / 2 + (k + 0.5) * self.detector_spacing

    @classmethod
    def lodopab(
        cls, image_size: int = LODOPAB_SIZE, angles_total: int = 1000, angle_step: int = 5
    ) -> CTGeometry:
        """LoDoPaB-CT's geometry for ``image_size`` x ``image_size`` images.

        Angles at the midpoints of ``angles_total`` equal parts of ``[0, pi)``,
        ``(i + 0.5) pi / angles_total`` for ``i = 0, angle_step, 2 angle_step, ...`` (200 angles by
        default). The image domain stays ``[-0.13, 0.13]^2`` m and the detector
        ``[-0.18385, 0.18385]`` m whatever the size. Bins: LoDoPaB's 513 scaled with the image,
        ``round(513 N / 362)`` (half up), but at least ``ceil(N sqrt 2)`` (one per pixel along the
        image diagonal, which the detector spans, so bins are never coarser than pixels), then
        made odd so that a bin is centred on the rotation axis, as in LoDoPaB (and skimage):
        513 bins at N = 362, 91 at 64, 183 at 128, 257 at 181.
        """
        if angles_total < 1 or angle_step < 1:
            raise ConfigError(
                f"CT angles_total and angle_step must be >= 1, got {angles_total}, {angle_step}"
            )
        if image_size < 2:
            raise ConfigError(f"CT image size must be >= 2, got {image_size}")
        angles = tuple(
            (i + 0.5) * math.pi / angles_total for i in range(0, angles_total, angle_step)
        )
        scaled = math.floor(LODOPAB_DETECTORS * image_size / LODOPAB_SIZE + 0.5)
        n_det = max(scaled, math.ceil(image_size * math.sqrt(2.0)))
        return cls(image_size, angles, n_det + 1 - n_det % 2)

    @classmethod
    def like_skimage(
        cls,
        image_size: int,
        theta_degrees: tuple[float, ...] | list[float] | np.ndarray,
        image_extent: float = LODOPAB_IMAGE_EXTENT,
    ) -> CTGeometry:
        """The geometry of ``skimage.transform.radon(image, theta_degrees, circle=False)``.

        skimage's sinogram ``sk`` (``(P, n_angles)``, bins one pixel wide, rotation axis at bin
        ``P // 2``, ``P = N + ceil(N sqrt 2 - N)``) and ours, ``y = A x``, relate as
        ``sk == y[0, 0, :, :P].T / pixel_size``: our angle is skimage's plus 90 degrees, and
        ``n_detectors`` is ``P`` rounded up to an odd number so that our centred detector puts bin
        ``P // 2`` on the axis. Exact for odd ``image_size``; skimage turns even-sized images about
        pixel ``(N // 2, N // 2)``, half a pixel off their centre: to compare, pad the image with a
        zero row and column at the end, and match skimage's bin k (of its ``P`` for size N) with
        our bin ``k + (n_detectors - 1) / 2 - P // 2`` for size N + 1.
        """
        p = image_size + math.ceil(math.sqrt(2.0) * image_size - image_size)
        n_det = p if p % 2 else p + 1
        angles = tuple(math.radians(float(t)) + math.pi / 2 for t in theta_degrees)
        return cls(image_size, angles, n_det, image_extent, n_det * image_extent / image_size)


# -- ray bookkeeping ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Ray:
    """Per-angle constants: rays advance along columns (``|cos| >= |sin|``) or rows."""

    along_columns: bool
    direction: float  # d: cos (along columns) or sin (along rows)
    slope: float  # tan (along columns) or cot (along rows)
    half: int  # intermediate rays k' = 0..2H sit at sigma = s / (d h) = k' - H


def _rays(geometry: CTGeometry) -> tuple[_Ray, ...]:
    n, h = geometry.image_size, geometry.pixel_size
    out = []
    for theta in geometry.angles:
        c, s = math.cos(theta), math.sin(theta)
        along_columns = abs(c) >= abs(s)
        d, slope = (c, s / c) if along_columns else (s, c / s)
        # Rays at |sigma| >= (N + 1)(1 + |slope|) / 2 miss the image; a bin at sigma reads the
        # rays within 2 of it (cubic interpolation).
        reach_image = (n + 1) * (1 + abs(slope)) / 2
        reach_detector = geometry.detector_extent / (2 * abs(d) * h) + 2
        out.append(_Ray(along_columns, d, slope, math.ceil(min(reach_image, reach_detector))))
    return tuple(out)


@dataclass(frozen=True)
class _Chunk:
    """Consecutive angles of one ray class, done in one ``grid_sample`` call each way."""

    start: int  # position of the first angle in the operator's processing order
    along_columns: bool
    directions: tuple[float, ...]
    slopes: tuple[float, ...]
    half: int  # max of the angles' H: extra rays are zero or read by no bin


def _chunks(rays: tuple[_Ray, ...], order: tuple[int, ...], max_rays: int) -> tuple[_Chunk, ...]:
    chunks: list[_Chunk] = []
    position = 0
    while position < len(order):
        first = rays[order[position]]
        end = position + 1
        half = first.half
        while end < len(order):
            nxt = rays[order[end]]
            width = (end - position + 1) * (2 * max(half, nxt.half) + 1)
            if nxt.along_columns != first.along_columns or width > max_rays:
                break
            half = max(half, nxt.half)
            end += 1
        part = [rays[i] for i in order[position:end]]
        chunks.append(
            _Chunk(
                start=position,
                along_columns=first.along_columns,
                directions=tuple(r.direction for r in part),
                slopes=tuple(r.slope for r in part),
                half=half,
            )
        )
        position = end
    return tuple(chunks)


def _is_fake(t: Tensor) -> bool:
    return isinstance(t, FakeTensor) or t.device.type == "meta"


# -- the operator -------------------------------------------------------------------------------
class ParallelBeamRadon(LinearOperator):
    """``A``: ``(B, 1, N, N)`` images -> ``(B, 1, n_angles, n_detectors)`` sinograms, metres.

    ``backend``: ``"sparse"`` (CSR matrices cached per geometry, device and dtype; fastest on a
    CPU for small images), ``"grid"`` (chunked ``grid_sample``, lean in memory, any size) or
    ``"auto"`` (sparse while the matrices are small, otherwise grid). Fake/meta tensors and dtypes
    other than float32/float64 always take the grid path. Both compute the same operator to
    rounding. CPU or CUDA; ``A_adjoint`` is exact and both are differentiable to any order.
    """

    def __init__(self, geometry: CTGeometry, backend: Backend = "auto") -> None:
        n = geometry.image_size
        super().__init__((1, n, n))
        if backend not in ("auto", "sparse", "grid"):
            raise ConfigError(f"unknown Radon backend {backend!r}; choose auto, sparse or grid")
        self.backend: Backend = backend
        self.register_buffer("angles", torch.tensor(geometry.angles, dtype=torch.float64))
        self._set_geometry(geometry)
        self.register_load_state_dict_post_hook(ParallelBeamRadon._refresh_after_load)

    def _set_geometry(self, geometry: CTGeometry) -> None:
        self.geometry = geometry
        self._rays = _rays(geometry)
        # Angles are processed grouped by ray class; ``_order[p]`` is the angle at position p.
        order = [
            i for cls in (True, False) for i, r in enumerate(self._rays) if r.along_columns == cls
        ]
        self._order = tuple(order)
        self._identity_order = self._order == tuple(range(geometry.n_angles))
        self._chunk_plans: dict[int, tuple[_Chunk, ...]] = {}
        # Each pixel lies between exactly two consecutive intermediate rays of every angle.
        self._sparse_nnz = 2 * geometry.n_angles * geometry.image_size**2
        self._norm_sq = None

    @staticmethod
    def _refresh_after_load(module: nn.Module, incompatible_keys: object) -> None:
        """Rebuild the geometry when a state dict brings other angles (beyond float32 rounding,
        should the buffer have been cast)."""
        assert isinstance(module, ParallelBeamRadon)
        if _is_fake(module.angles):
            return
        loaded = module.angles.detach().cpu().to(torch.float64)
        current = torch.tensor(module.geometry.angles, dtype=torch.float64)
        if loaded.shape != current.shape or not torch.allclose(loaded, current, rtol=0, atol=1e-6):
            module._set_geometry(replace(module.geometry, angles=tuple(loaded.tolist())))

    def measurement_shape(self) -> tuple[int, ...]:
        return (1, self.geometry.n_angles, self.geometry.n_detectors)

    @property
    def chunk_bytes(self) -> int:
        """Temporary memory budget of one ``grid_sample`` chunk (grid + samples), bytes: the
        ``grid`` backend splits an application to a batch of ``b`` into chunks of angles of at
        most this many bytes, ``(2 + b) * N * itemsize`` per intermediate ray."""
        return _CHUNK_BYTES

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"image_size={g.image_size}, n_angles={g.n_angles}, n_detectors={g.n_detectors}, "
            f"backend={self.backend}"
        )

    def _A(self, x: Tensor) -> Tensor:
        self._check(x, self.image_shape, "images")
        return _Project.apply(x, self)

    def _A_adjoint(self, y: Tensor) -> Tensor:
        self._check(y, self.measurement_shape(), "sinograms")
        return _BackProject.apply(y, self)

    @torch.no_grad()
    def norm_sq(self, iterations: int = 30, seed: int = 0) -> float:
        """``||A||_2^2`` (m^2) by seeded power iteration; cached per geometry for the process.

        float32 power iteration at sizes above the sparse limit: ~1e-6 relative accuracy.
        """
        if self._norm_sq is None:
            key = (self.geometry, iterations, seed)
            if key not in _NORM_SQ_CACHE:
                _NORM_SQ_CACHE[key] = self._power_iteration(iterations, seed)
            self._norm_sq = _NORM_SQ_CACHE[key]
        return self._norm_sq

    # -- implementation -------------------------------------------------------------------------
    @staticmethod
    def _check(t: Tensor, shape: tuple[int, ...], what: str) -> None:
        if t.dim() != 4 or tuple(t.shape[1:]) != tuple(shape):
            expected = ", ".join(map(str, shape))
            raise InputError(
                f"Radon operator expects {what} of shape (B, {expected}), got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise InputError(f"Radon operator expects floating-point {what}, got {t.dtype}")

    def _power_iteration(self, iterations: int, seed: int) -> float:
        """:func:`~luser_cli.operators.base.power_iteration` in the working dtype, at most
        ``iterations`` steps, stopping once the estimate moves by less than 1e-9 (float64, where
        the sparse path makes it cheap) or 1e-6 (float32, larger images): Radon's leading
        eigenvector is smooth, ~10 steps at 362 x 362. On the buffers' device, or on real CPU
        tensors when the buffers are fake (a memory simulation gets the value)."""
        calls = (self.calls_A, self.calls_A_adjoint)
        dtype = torch.float64 if self._sparse_allowed() else torch.float32
        device = torch.device("cpu") if _is_fake(self.angles) else self.angles.device
        with unset_fake_temporarily():
            value = power_iteration(
                self.AtA,
                self.image_shape,
                iterations=iterations,
                seed=seed,
                device=device,
                dtype=dtype,
                rtol=1e-9 if dtype == torch.float64 else 1e-6,
            )
        self.calls_A, self.calls_A_adjoint = calls
        return value

    def _sparse_allowed(self) -> bool:
        if self.backend == "auto":
            return self._sparse_nnz <= _SPARSE_MAX_NNZ
        return self.backend == "sparse"

    def _use_sparse(self, t: Tensor) -> bool:
        return (
            self._sparse_allowed() and t.dtype in (torch.float32, torch.float64) and not _is_fake(t)
        )

    def _project(self, x: Tensor) -> Tensor:
        """``A x`` without autograd: ``(B, 1, N, N)`` -> ``(B, 1, n_angles, n_det)``."""
        b, g = x.shape[0], self.geometry
        if self._use_sparse(x):
            s, _, r, _ = _sparse_matrices(g, self._rays, x.device, x.dtype)
            flat = x.reshape(b, -1).t().contiguous()
            return (r @ (s @ flat)).t().reshape(b, 1, g.n_angles, g.n_detectors)
        plan = self._plan(b, x.element_size())
        n = g.image_size
        # One grid buffer for all chunks: the exact-axis coordinate (pixel centres along the
        # last axis) is written once per ray class, the interpolated one per chunk.
        buffer = x.new_empty(max(len(c.slopes) * (2 * c.half + 1) for c in plan), n, 2)
        w_pix = self._axis(n, x)
        parts, along_columns = [], None
        for chunk in plan:
            if chunk.along_columns != along_columns:
                along_columns = chunk.along_columns
                buffer[..., 0 if along_columns else 1] = w_pix
            parts.append(self._project_chunk(x, chunk, buffer, w_pix))
        out = torch.cat(parts, dim=1)
        if not self._identity_order:
            inverse = [0] * len(self._order)
            for position, index in enumerate(self._order):
                inverse[index] = position
            out = out.index_select(1, torch.tensor(inverse, device=x.device))
        return out.unsqueeze(1)

    def _back_project(self, y: Tensor) -> Tensor:
        """``A^T y`` without autograd: ``(B, 1, n_angles, n_det)`` -> ``(B, 1, N, N)``."""
        b, n = y.shape[0], self.geometry.image_size
        if self._use_sparse(y):
            _, s_t, _, r_t = _sparse_matrices(self.geometry, self._rays, y.device, y.dtype)
            flat = y.reshape(b, -1).t().contiguous()
            return (s_t @ (r_t @ flat)).t().reshape(b, 1, n, n)
        y = y.squeeze(1)
        if not self._identity_order:
            y = y.index_select(1, torch.tensor(self._order, device=y.device))
        plan = self._plan(b, y.element_size())
        # Grid buffer: the second coordinate (row of a one-row image) is always 0.
        buffer = y.new_empty(max(len(c.slopes) for c in plan) * n, n, 2)
        buffer[..., 1] = 0
        out = y.new_zeros(b, n, n)
        for chunk in plan:
            count = len(chunk.slopes)
            out += self._back_project_chunk(y[:, chunk.start : chunk.start + count], chunk, buffer)
        return out.unsqueeze(1)

    def _plan(self, batch: int, itemsize: int) -> tuple[_Chunk, ...]:
        # Per intermediate ray: its N grid points (2 values) and N samples per batch item.
        max_rays = max(1, self.chunk_bytes // ((2 + batch) * self.geometry.image_size * itemsize))
        max_rays = 1 << (max_rays.bit_length() - 1)  # few distinct plans
        if max_rays not in self._chunk_plans:
            self._chunk_plans[max_rays] = _chunks(self._rays, self._order, max_rays)
        return self._chunk_plans[max_rays]

    # Grids are normalised (align_corners=False): index k of an n-long axis is at (2k + 1)/n - 1.
    @staticmethod
    def _axis(n: int, like: Tensor) -> Tensor:
        return (2 * torch.arange(n, dtype=like.dtype, device=like.device) + 1) / n - 1

    def _chunk_tensors(self, chunk: _Chunk, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Slopes ``(a, 1, 1)``, steps ``h / |d|`` ``(a, 1, 1)`` (metres), and the bins' grid
        ``(a, 1, n_det, 2)`` in the chunk's intermediate-ray array (``k' = s / (d h) + H``)."""
        g = self.geometry
        kw = {"dtype": like.dtype, "device": like.device}
        slopes = torch.tensor(chunk.slopes, **kw).view(-1, 1, 1)
        steps = torch.tensor([g.pixel_size / abs(d) for d in chunk.directions], **kw).view(-1, 1, 1)
        rays = 2 * chunk.half + 1
        scale = torch.tensor([2 / (d * g.pixel_size * rays) for d in chunk.directions], **kw)
        s = g.detector_positions.to(**kw)
        bins = torch.zeros(len(chunk.slopes), 1, g.n_detectors, 2, **kw)
        torch.mul(scale.view(-1, 1), s, out=bins[:, 0, :, 0])
        return slopes, steps, bins

    def _project_chunk(self, x: Tensor, chunk: _Chunk, buffer: Tensor, w_pix: Tensor) -> Tensor:
        """``(B, 1, N, N)`` -> ``(B, a, n_det)`` for the chunk's ``a`` angles. ``buffer``:
        ``(>= a rays, N, 2)`` with the exact-axis coordinates already in place."""
        b, n = x.shape[0], self.geometry.image_size
        a, rays = len(chunk.slopes), 2 * chunk.half + 1
        slopes, steps, bins = self._chunk_tensors(chunk, x)
        # Ray k' samples each pixel v of the exact axis at u = (k' - H) - (v + 0.5 - N/2) slope
        # + (N - 1)/2 on the other; normalised: (rays / N) w_k' - slope w_v.
        w_rays = self._axis(rays, x).view(1, rays, 1) * (rays / n)
        grid = buffer[: a * rays].view(a, rays, n, 2)
        torch.sub(w_rays, slopes * w_pix, out=grid[..., 1 if chunk.along_columns else 0])
        image = x.reshape(1, b, n, n).expand(a, b, n, n)
        samples = F.grid_sample(image, grid, mode="bilinear", align_corners=False)
        ray_sums = samples.sum(-1, keepdim=True).transpose(2, 3) * steps.unsqueeze(1)
        out = F.grid_sample(ray_sums, bins, mode="bicubic", align_corners=False)  # (a,B,1,n_det)
        return out.squeeze(2).transpose(0, 1)

    def _back_project_chunk(self, y: Tensor, chunk: _Chunk, buffer: Tensor) -> Tensor:
        """``(B, a, n_det)`` -> ``(B, N, N)``: the transpose of :meth:`_project_chunk`.
        ``buffer``: ``(>= a N, N, 2)`` with zeros in ``[..., 1]``."""
        b, n = y.shape[0], self.geometry.image_size
        a, rays = len(chunk.slopes), 2 * chunk.half + 1
        slopes, steps, bins = self._chunk_tensors(chunk, y)
        grad = y.transpose(0, 1).unsqueeze(2).contiguous()  # (a, B, 1, n_det)
        zeros = y.new_zeros(()).expand(a, b, 1, rays)  # only the input's shape is used
        ray_sums = torch.ops.aten.grid_sampler_2d_backward(
            grad, zeros, bins, _BICUBIC, _ZEROS, False, [True, False]
        )[0] * steps.unsqueeze(1)
        # S^T: pixel (i, j) reads the ray sums at k' = i - beta_j (along columns), normalised
        # (N / rays)(w_i + slope w_j); along rows i and j swap.
        w = self._axis(n, y) * (n / rays)
        rows, cols = w.view(1, n, 1), w.view(1, 1, n)
        first, second = (rows, cols) if chunk.along_columns else (cols, rows)
        grid = buffer[: a * n].view(a, n, n, 2)
        torch.add(first, slopes * second, out=grid[..., 0])
        images = F.grid_sample(ray_sums, grid, mode="bilinear", align_corners=False)
        return images.sum(0)


class _Project(torch.autograd.Function):
    """``A x``; its backward is :class:`_BackProject`, so gradients of every order are exact."""

    @staticmethod
    def forward(ctx, x: Tensor, op: ParallelBeamRadon) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op._project(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _BackProject.apply(grad, ctx.op), None


class _BackProject(torch.autograd.Function):
    """``A^T y``; its backward is :class:`_Project`."""

    @staticmethod
    def forward(ctx, y: Tensor, op: ParallelBeamRadon) -> Tensor:  # type: ignore[override]
        ctx.op = op
        return op._back_project(y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _Project.apply(grad, ctx.op), None


# -- sparse matrices ----------------------------------------------------------------------------
def _cubic_weights(t: Tensor) -> Tensor:
    """Keys cubic weights of taps -1, 0, 1, 2 for a fractional offset ``t``: ``(..., 4)``."""
    a = _CUBIC_A

    def near(z: Tensor) -> Tensor:  # |z| <= 1
        return ((a + 2) * z - (a + 3)) * z * z + 1

    def far(z: Tensor) -> Tensor:  # 1 < |z| < 2
        return ((a * z - 5 * a) * z + 8 * a) * z - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def _sparse_entries(
    geometry: CTGeometry, rays: tuple[_Ray, ...]
) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor], int]:
    """COO entries (float64, CPU, unique) of ``S`` (intermediate rays x pixels) and ``R`` (bins x
    intermediate rays), and the number of intermediate rays. Angle a's rays are rows
    ``offset_a + k'``; pixel (i, j) is column ``i N + j``; bin k of angle a is row ``a n_det + k``.
    Vectorised over groups of angles (many small tensor ops are slow on a busy CPU).
    """
    n, h, n_det = geometry.image_size, geometry.pixel_size, geometry.n_detectors
    s_pos = geometry.detector_positions.view(1, n_det)
    counts = torch.tensor([2 * r.half + 1 for r in rays])
    offsets = torch.cumsum(counts, 0) - counts
    pixels = torch.arange(n)
    centred = (pixels.double() + 0.5 - n / 2).view(1, 1, n)
    s_parts: list[tuple[Tensor, Tensor, Tensor]] = []
    r_parts: list[tuple[Tensor, Tensor, Tensor]] = []
    group = max(1, 1_000_000 // ((2 * max(r.half for r in rays) + 1) * n))
    for first in range(0, len(rays), group):
        part = rays[first : first + group]
        a = len(part)
        top = max(r.half for r in part)
        half = torch.tensor([r.half for r in part]).view(a, 1, 1)
        slope = torch.tensor([r.slope for r in part], dtype=torch.float64).view(a, 1, 1)
        d = torch.tensor([r.direction for r in part], dtype=torch.float64).view(a, 1)
        columns = torch.tensor([r.along_columns for r in part]).view(a, 1, 1)
        offset = offsets[first : first + a].view(a, 1, 1)
        # S: ray sigma = k - top of each angle; pixel v of the exact axis, u on the other.
        sigma = torch.arange(-top, top + 1).view(1, -1, 1)
        u = sigma - centred * slope + (n - 1) / 2  # (a, rays, n)
        u0 = torch.floor(u)
        frac = u - u0
        ray_row = (offset + sigma + half).expand_as(u)
        exact = pixels.view(1, 1, n).expand_as(u)
        own = sigma.abs() <= half
        step = (h / d.abs()).view(a, 1, 1)
        for shift, weight in ((0, 1 - frac), (1, frac)):
            interp = u0.long() + shift
            keep = own & (interp >= 0) & (interp < n) & (weight != 0)
            col = torch.where(columns, interp * n + exact, exact * n + interp)
            s_parts.append((ray_row[keep], col[keep], (weight * step)[keep]))
        # R: bin k reads rays q0 - 1 .. q0 + 2 around q = s / (d h) + H (index in the angle's rays).
        q = s_pos / (d * h) + half.view(a, 1)  # (a, n_det)
        q0 = torch.floor(q)
        taps = q0.long().unsqueeze(-1) + torch.arange(-1, 3)  # (a, n_det, 4)
        weights = _cubic_weights(q - q0)
        keep = (taps >= 0) & (taps <= 2 * half) & (weights != 0)
        bins = ((first + torch.arange(a)) * n_det).view(a, 1, 1) + torch.arange(n_det).view(
            1, -1, 1
        )
        r_parts.append((bins.expand_as(taps)[keep], (offset + taps)[keep], weights[keep]))
    s_all = tuple(torch.cat([p[i] for p in s_parts]) for i in range(3))
    r_all = tuple(torch.cat([p[i] for p in r_parts]) for i in range(3))
    return s_all, r_all, int(counts.sum())  # type: ignore[return-value]


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """CSR matrix (int32 indices) from unique COO entries; sorted with numpy's fast argsort."""
    order = torch.from_numpy(np.argsort((rows * shape[1] + cols).numpy()))
    rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow.to(torch.int32), cols.to(torch.int32), values, shape, check_invariants=False
        )


def _sparse_matrices(
    geometry: CTGeometry, rays: tuple[_Ray, ...], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(S, S^T, R, R^T)`` as CSR on ``device`` in ``dtype``, so ``A = R S``; cached."""
    key = (geometry, str(device), dtype)
    if key in _SPARSE_CACHE:
        _SPARSE_CACHE.move_to_end(key)
        return _SPARSE_CACHE[key]
    (sr, sc, sv), (rr, rc, rv), n_rays = _sparse_entries(geometry, rays)
    n_pix, n_bins = geometry.image_size**2, geometry.n_angles * geometry.n_detectors
    mats = (
        _csr(sr, sc, sv.to(dtype), (n_rays, n_pix)),
        _csr(sc, sr, sv.to(dtype), (n_pix, n_rays)),
        _csr(rr, rc, rv.to(dtype), (n_bins, n_rays)),
        _csr(rc, rr, rv.to(dtype), (n_rays, n_bins)),
    )
    result = tuple(m.to(device) for m in mats)
    _SPARSE_CACHE[key] = result  # type: ignore[assignment]
    while len(_SPARSE_CACHE) > _SPARSE_CACHE_SIZE:
        _SPARSE_CACHE.popitem(last=False)
    return result  # type: ignore[return-value]


#: CSR quadruples per ``(geometry, device, dtype)``, least recently used first.
_SPARSE_CACHE: OrderedDict[tuple[CTGeometry, str, torch.dtype], tuple[Tensor, ...]] = OrderedDict()
#: ``||A||^2`` per ``(geometry, iterations, seed)``: power iteration is slow at 362 x 362.
_NORM_SQ_CACHE: dict[tuple[CTGeometry, int, int], float] = {}
