"""Operator tests: one shared property suite that every task operator (and the memory probe's
Radon stand-in) passes, then operator-specific checks against independent references (NumPy
FFT, SciPy convolution).

Note for ``-k`` filtering: only the CT cases (the stand-in included) carry "ct" in their test ids.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch._subclasses.fake_tensor import FakeTensorMode

from luser_cli.errors import ConfigError, InputError
from luser_cli.memprobe.radon_stand_in import RadonStandIn, measure_scratch
from luser_cli.operators.base import LinearOperator, dot, power_iteration
from luser_cli.operators.blur import GaussianBlur, gaussian_kernel
from luser_cli.operators.masks import random_column_mask
from luser_cli.operators.mri import MaskedFourier
from luser_cli.operators.noise import NoiseModel
from luser_cli.operators.radon import CTGeometry
from luser_cli.physics import build_noise, build_operator

#: The memory probe's CT operator (``luser memprobe --backend sim``): the task's Radon
#: transform on real tensors, a shape-and-memory double on fake ones.
STAND_IN = "ct-standin"
# (task or STAND_IN, image size, k-space size or None); odd sizes and MRI zero-padding included.
CASES = [
    ("deblur", 16, None),
    ("deblur", 21, None),
    ("ct", 16, None),
    ("ct", 21, None),
    (STAND_IN, 16, None),
    (STAND_IN, 21, None),
    ("mri4x", 16, None),
    ("mri4x", 21, None),
    ("mri4x", 16, (24, 22)),
    ("mri8x", 16, None),
    ("mri8x", 21, (32, 27)),
]
IDS = [f"{t}-{s}" + (f"-k{k[0]}x{k[1]}" if k else "") for t, s, k in CASES]
TINY = [
    ("deblur", 8, None),
    ("ct", 8, None),
    (STAND_IN, 8, None),
    ("mri4x", 8, None),
    ("mri8x", 8, (10, 11)),
]
TINY_IDS = [f"{t}-{s}" + (f"-k{k[0]}x{k[1]}" if k else "") for t, s, k in TINY]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@functools.cache
def _stand_in_args(size: int) -> tuple[CTGeometry, tuple[int, int]]:
    """Geometry and measured scratch of the stand-in (real tensors, outside any fake mode)."""
    geometry = build_operator("ct", size).geometry  # type: ignore[attr-defined]
    return geometry, measure_scratch(geometry)


def build(task: str, size: int, kspace: tuple[int, int] | None) -> LinearOperator:
    """The operator of a case (inside a fake mode too, as the memory probe builds it)."""
    if task == STAND_IN:
        return RadonStandIn(*_stand_in_args(size))
    return build_operator(task, size, kspace_size=kspace)


@functools.cache
def _built(task: str, size: int, kspace: tuple[int, int] | None) -> LinearOperator:
    return build(task, size, kspace)


def make_op(task: str, size: int, kspace: tuple[int, int] | None) -> LinearOperator:
    """A fresh float64 copy of the task operator (built once per case)."""
    op = copy.deepcopy(_built(task, size, kspace)).to(torch.float64)
    op.reset_counters()
    return op


def randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- the shared property suite ------------------------------------------------------------------
@pytest.mark.parametrize(("task", "size", "kspace"), CASES, ids=IDS)
def test_adjointness(task: str, size: int, kspace: tuple[int, int] | None) -> None:
    op = make_op(task, size, kspace)
    # |<Ax, y> - <x, A^T y>| <= 1e-6 max(|<Ax, y>|, 1e-3 ||Ax|| ||y||) for every item
    assert op.adjointness_test(torch.Generator().manual_seed(1), batch=3) <= 1e-6
    assert (op.calls_A, op.calls_A_adjoint) == (0, 0)  # a check, not counted


@pytest.mark.parametrize(("task", "size", "kspace"), CASES, ids=IDS)
def test_measure_is_restrict_of_noise_of_A(
    task: str, size: int, kspace: tuple[int, int] | None
) -> None:
    op = make_op(task, size, kspace)
    if task != STAND_IN:  # build_operator gives the operator its task's noise
        assert op.noise.describe() == build_noise(task).describe()
    x = randn((3, *op.image_shape), 18).abs()
    # one generator: one draw for the batch, bit for bit the hand composition
    y = op.measure(x, torch.Generator().manual_seed(5))
    assert (op.calls_A, op.calls_A_adjoint) == (1, 0)
    ref = op.restrict(op.noise(op.A(x), torch.Generator().manual_seed(5)))
    assert y.shape == (3, *op.measurement_shape()) and torch.equal(y, ref)
    # one generator per item: each item's noise from its own seed, whatever the batching
    seeds = [21, 22, 23]
    y = op.measure(x, [torch.Generator().manual_seed(s) for s in seeds])
    parts = [
        op.measure(x[i : i + 1], torch.Generator().manual_seed(s)) for i, s in enumerate(seeds)
    ]
    assert torch.equal(y, torch.cat(parts))
    with pytest.raises(InputError, match="2 generators for a batch of 3"):
        op.measure(x, [torch.Generator(), torch.Generator()])
    # another noise model for one call; noise-free is restrict(A x)
    assert torch.equal(op.measure(x, noise=NoiseModel()), op.restrict(op.A(x)))
    if not isinstance(op, MaskedFourier):
        assert op.restrict(y) is y  # the identity but for MRI


def test_power_iteration_stopping_rules() -> None:
    diag = torch.linspace(0.1, 2.0, 12, dtype=torch.float64).view(1, 1, 3, 4)
    calls = []

    def normal(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.dtype)
        return diag.to(x.dtype) * x

    value = power_iteration(normal, (1, 3, 4), iterations=200, seed=3)
    assert len(calls) == 200 and value == pytest.approx(2.0, rel=1e-9)
    calls.clear()
    stopped = power_iteration(normal, (1, 3, 4), iterations=200, seed=3, rtol=1e-9)
    assert 1 < len(calls) < 200 and stopped == pytest.approx(2.0, rel=1e-7)
    calls.clear()  # applied in ``dtype``, iterate kept in ``iterate_dtype``
    power_iteration(
        normal, (1, 3, 4), iterations=3, dtype=torch.float32, iterate_dtype=torch.float64
    )
    assert calls == [torch.float32] * 3
    # LinearOperator.norm_sq is this function: all steps, float64 iterate, buffers' dtype
    op = make_op("mri4x", 16, (24, 22))
    expected = power_iteration(
        op.AtA, op.image_shape, iterations=7, seed=2, iterate_dtype=torch.float64
    )
    assert LinearOperator.norm_sq(op, iterations=7, seed=2) == expected


def test_adjointness_test_catches_a_wrong_adjoint() -> None:
    class Skewed(GaussianBlur):
        def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
            return 1.01 * super()._A_adjoint(y)

    op = Skewed((1, 12, 12), gaussian_kernel(5, 2.0))
    assert op.adjointness_test(torch.Generator().manual_seed(0)) == pytest.approx(0.01, rel=1e-6)
    assert GaussianBlur((1, 12, 12), gaussian_kernel(5, 2.0)).adjointness_test() < 1e-12


@pytest.mark.parametrize(("task", "size", "kspace"), TINY, ids=TINY_IDS)
def test_gradcheck(task: str, size: int, kspace: tuple[int, int] | None) -> None:
    op = make_op(task, size, kspace)
    x = randn((1, *op.image_shape), 3).requires_grad_()
    y = randn((1, *op.measurement_shape()), 4).requires_grad_()
    assert torch.autograd.gradcheck(op.A, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(op.A_adjoint, (y,), fast_mode=True)


@pytest.mark.parametrize(("task", "size", "kspace"), CASES, ids=IDS)
def test_batch_consistency_and_shapes(task: str, size: int, kspace: tuple[int, int] | None) -> None:
    op = make_op(task, size, kspace)
    x = randn((3, *op.image_shape), 5)
    y = randn((3, *op.measurement_shape()), 6)
    ax, aty = op.A(x), op.A_adjoint(y)
    assert ax.shape == (3, *op.measurement_shape())
    assert aty.shape == (3, *op.image_shape)
    for i in range(3):
        torch.testing.assert_close(op.A(x[i : i + 1]), ax[i : i + 1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            op.A_adjoint(y[i : i + 1]), aty[i : i + 1], rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("task", "size", "kspace"), CASES, ids=IDS)
def test_dtype_and_device_preserved(
    task: str, size: int, kspace: tuple[int, int] | None, dtype: torch.dtype, device: str
) -> None:
    op = make_op(task, size, kspace).to(device=device, dtype=dtype)
    x = randn((2, *op.image_shape), 7, dtype).to(device)
    ax = op.A(x)
    aty = op.A_adjoint(ax)
    for t in (ax, aty):
        assert t.dtype == dtype
        assert t.device.type == device
        assert torch.isfinite(t).all()
    # float32 agrees with the float64 reference
    ref = make_op(task, size, kspace).A(x.cpu().double())
    torch.testing.assert_close(ax.cpu().double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max())


@pytest.mark.parametrize(("task", "size", "kspace"), CASES, ids=IDS)
def test_norm_sq(task: str, size: int, kspace: tuple[int, int] | None) -> None:
    op = make_op(task, size, kspace)
    value = op.norm_sq()
    assert value > 0
    assert op.norm_sq() == value  # cached
    assert (op.calls_A, op.calls_A_adjoint) == (0, 0)  # power iteration not counted
    x = randn((8, *op.image_shape), 8)
    ratio = op.A(x).flatten(1).square().sum(1) / x.flatten(1).square().sum(1)
    assert torch.all(ratio <= value * (1 + 1e-6)), (ratio.max(), value)
    # and it is the top of the spectrum: a long power iteration from another seed cannot beat it
    z = randn((1, *op.image_shape), 9)
    for _ in range(100):
        z = op.AtA(z)
        z = z / z.norm()
    rayleigh = float(dot(op.A(z), op.A(z)))
    assert rayleigh <= value * (1 + 1e-6)
    assert rayleigh >= value * (1 - 1e-2)


@pytest.mark.parametrize(("task", "size", "kspace"), CASES, ids=IDS)
def test_call_counters(task: str, size: int, kspace: tuple[int, int] | None) -> None:
    op = make_op(task, size, kspace)
    x = randn((2, *op.image_shape), 10)
    op.A(x)
    assert (op.calls_A, op.calls_A_adjoint) == (1, 0)
    op.A_adjoint(op.A(x))
    assert (op.calls_A, op.calls_A_adjoint) == (2, 1)
    op.AtA(x)
    assert (op.calls_A, op.calls_A_adjoint) == (3, 2)
    op.reset_counters()
    assert (op.calls_A, op.calls_A_adjoint) == (0, 0)


def _fake_step(op: LinearOperator, batch: int) -> None:
    x = torch.randn(batch, *op.image_shape, requires_grad=True)
    y = op.A(x)
    assert y.shape == (batch, *op.measurement_shape())
    back = op.A_adjoint(y)
    assert back.shape == x.shape
    (back.square().sum() + y.square().sum()).backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize(("task", "size", "kspace"), CASES, ids=IDS)
def test_fake_tensor_mode(task: str, size: int, kspace: tuple[int, int] | None) -> None:
    # built inside the mode (all buffers fake) ...
    if task == STAND_IN:
        _stand_in_args(size)  # measured on real tensors
    with FakeTensorMode():
        op = build(task, size, kspace)
        _fake_step(op, 3)
    # ... and a real operator applied to fake inputs
    op = copy.deepcopy(_built(task, size, kspace))
    with FakeTensorMode(allow_non_fake_inputs=True):
        _fake_step(op, 2)


# -- MRI ----------------------------------------------------------------------------------------
def _np_fft2c(z: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(z, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )


def _np_ifft2c(k: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )


def _as_real(z: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([z.real, z.imag], axis=1))


@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 21), (21, 15), (7, 9)])
def test_mri_fft_matches_numpy(h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, h, w)) + 1j * rng.standard_normal((2, h, w))
    op = MaskedFourier((h, w), torch.ones(w))
    torch.testing.assert_close(op.A(_as_real(z)), _as_real(_np_fft2c(z)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        op.A_adjoint(_as_real(z)), _as_real(_np_ifft2c(z)), rtol=1e-12, atol=1e-12
    )
    # a full mask without padding is unitary: A^T A = I
    torch.testing.assert_close(op.AtA(_as_real(z)), _as_real(z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("size", "kspace"), [((16, 16), (32, 22)), ((15, 21), (40, 27))])
def test_mri_zero_padding_matches_fastmri(size: tuple[int, int], kspace: tuple[int, int]) -> None:
    (h, w), (hk, wk) = size, kspace
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, h, w)) + 1j * rng.standard_normal((2, h, w))
    k = rng.standard_normal((2, hk, wk)) + 1j * rng.standard_normal((2, hk, wk))
    mask = random_column_mask(wk, 4, 0.08, seed=3).numpy()
    op = MaskedFourier(size, torch.from_numpy(mask), kspace_size=kspace)
    top, left = (hk - h) // 2, (wk - w) // 2
    padded = np.zeros((2, hk, wk), complex)
    padded[:, top : top + h, left : left + w] = z
    torch.testing.assert_close(
        op.A(_as_real(z)), _as_real(_np_fft2c(padded) * mask), rtol=1e-12, atol=1e-12
    )
    # adjoint = fastMRI's ifft2c of the masked k-space, then its center_crop
    full = _np_ifft2c(k * mask)
    torch.testing.assert_close(
        op.A_adjoint(_as_real(k)),
        _as_real(full[:, top : top + h, left : left + w]),
        rtol=1e-12,
        atol=1e-12,
    )


def test_mri_measurements_zero_outside_mask() -> None:
    mask = random_column_mask(20, 4, 0.08, seed=0)
    op = MaskedFourier((20, 20), mask)
    y = op.A(randn((2, 2, 20, 20), 11))
    assert torch.all(y[..., ~mask] == 0)
    assert torch.all(y[..., mask] != 0)
    noisy = randn((2, 2, 20, 20), 12)
    r = op.restrict(noisy)
    assert torch.all(r[..., ~mask] == 0)
    torch.testing.assert_close(r[..., mask], noisy[..., mask])
    assert op.mask.shape == (1, 1, 1, 20) and op.mask.is_floating_point()


def test_mri_per_sample_masks() -> None:
    masks = torch.stack([random_column_mask(18, 4, 0.08, seed=s) for s in range(3)])
    op = MaskedFourier((16, 16), masks, kspace_size=(20, 18))
    assert op.mask.shape == (3, 1, 1, 18)
    x = randn((3, 2, 16, 16), 13)
    y = randn((3, 2, 20, 18), 14)
    ax, aty = op.A(x), op.A_adjoint(y)
    for i in range(3):
        single = MaskedFourier((16, 16), masks[i], kspace_size=(20, 18))
        torch.testing.assert_close(ax[i : i + 1], single.A(x[i : i + 1]))
        torch.testing.assert_close(aty[i : i + 1], single.A_adjoint(y[i : i + 1]))
    with pytest.raises(InputError, match="3 masks but got a batch of 2"):
        op.A(x[:2])
    assert op.norm_sq() == pytest.approx(1.0, abs=1e-12)


def test_mri_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="Wk = 16"):
        MaskedFourier((16, 16), torch.ones(15))
    with pytest.raises(ConfigError, match="smaller than the image"):
        MaskedFourier((16, 16), torch.ones(16), kspace_size=(12, 16))
    op = MaskedFourier((16, 16), torch.ones(16))
    with pytest.raises(InputError, match=r"\(B, 2, 16, 16\)"):
        op.A(torch.zeros(1, 2, 16, 15))


def test_mri_norm_below_one_when_padding_limits_concentration() -> None:
    # 8-pixel-wide images in a 40-column grid sampled on 3 columns: no image can put all its
    # energy on the sampled columns, so ||A|| < 1; the exact value must match power iteration.
    mask = torch.zeros(40)
    mask[[3, 20, 31]] = 1
    op = MaskedFourier((6, 8), mask, kspace_size=(6, 40)).to(torch.float64)
    exact = op.norm_sq()
    assert 0 < exact < 0.99
    reference = copy.deepcopy(op)
    reference._norm_sq = None
    iterated = LinearOperator.norm_sq(reference, iterations=500)
    assert iterated == pytest.approx(exact, rel=1e-8)


# -- deblurring ---------------------------------------------------------------------------------
def test_gaussian_kernel_moments() -> None:
    big = gaussian_kernel(41, 5.0)
    assert big.dtype == torch.float64 and big.shape == (41, 41)
    assert float(big.sum()) == pytest.approx(1.0, abs=1e-14)
    r = torch.arange(41, dtype=torch.float64) - 20
    assert float((big * r[:, None]).sum()) == pytest.approx(0.0, abs=1e-14)  # centred
    assert float((big * r[:, None] ** 2).sum()) == pytest.approx(5.0, rel=1e-9)  # variance 5
    assert float((big * r[None, :] ** 2).sum()) == pytest.approx(5.0, rel=1e-9)
    assert float((big * r[:, None] * r[None, :]).sum()) == pytest.approx(0.0, abs=1e-14)
    # the task's 9x9 kernel is the centre of the same Gaussian, renormalised
    k = gaussian_kernel(9, 5.0)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-14)
    crop = big[16:25, 16:25]
    torch.testing.assert_close(k, crop / crop.sum(), rtol=1e-13, atol=0)
    torch.testing.assert_close(k, k.flip(0))
    torch.testing.assert_close(k, k.T)
    assert int(k.argmax()) == 40  # the centre of 9x9


@pytest.mark.parametrize("bad", [0, 4, 8, -3, 2.5])
def test_gaussian_kernel_needs_odd_size(bad: float) -> None:
    with pytest.raises(ConfigError, match="odd"):
        gaussian_kernel(bad, 5.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="variance"):
        gaussian_kernel(9, 0.0)


@pytest.mark.parametrize(("h", "w"), [(16, 21), (9, 8)])
def test_blur_matches_scipy_circular_convolution(h: int, w: int) -> None:
    rng = np.random.default_rng(2)
    kernel = rng.random((5, 7))  # asymmetric: catches flips and off-by-one centring
    img = rng.standard_normal((2, 3, h, w))
    op = GaussianBlur((3, h, w), torch.from_numpy(kernel))
    ref = np.stack([[ndimage.convolve(c, kernel, mode="wrap") for c in im] for im in img])
    torch.testing.assert_close(
        op.A(torch.from_numpy(img)), torch.from_numpy(ref), rtol=1e-12, atol=1e-12
    )
    # adjoint = correlation = convolution with the flipped kernel
    ref_t = np.stack([[ndimage.correlate(c, kernel, mode="wrap") for c in im] for im in img])
    torch.testing.assert_close(
        op.A_adjoint(torch.from_numpy(img)), torch.from_numpy(ref_t), rtol=1e-12, atol=1e-12
    )


def test_blur_kernel_larger_than_image_wraps() -> None:
    kernel = gaussian_kernel(9, 5.0)
    img = randn((1, 1, 4, 5), 15)
    op = GaussianBlur((1, 4, 5), kernel)
    tiled = np.tile(img[0, 0].numpy(), (5, 5))  # periodic extension, then the central tile
    ref = ndimage.convolve(tiled, kernel.numpy(), mode="wrap")[8:12, 10:15]
    torch.testing.assert_close(op.A(img)[0, 0], torch.from_numpy(ref), rtol=1e-12, atol=1e-12)


def test_blur_fourier_multiplier_and_norm() -> None:
    op = GaussianBlur((3, 16, 21), gaussian_kernel(9, 5.0))
    tf = op.transfer_function()
    assert tf.shape == (16, 21) and tf.is_complex()
    x = randn((2, 3, 16, 21), 16)
    via_fft = torch.fft.ifft2(torch.fft.fft2(x) * tf).real
    torch.testing.assert_close(op.A(x), via_fft, rtol=1e-12, atol=1e-12)
    assert op.norm_sq() == pytest.approx(float(tf.abs().square().max()), rel=1e-12)
    assert op.norm_sq() == pytest.approx(1.0, abs=1e-12)  # a normalised non-negative kernel
    assert op.measurement_shape() == (3, 16, 21)


def test_blur_saved_state_and_dtype_moves() -> None:
    op = GaussianBlur((3, 12, 12), gaussian_kernel(9, 5.0))
    assert set(op.state_dict()) == {"kernel"}
    x = randn((1, 3, 12, 12), 17)
    ref = op.A(x)
    # the cached transfer function survives .to(float32) / .to(float64) round trips
    moved = copy.deepcopy(op).to(torch.float32).to(torch.float64)
    torch.testing.assert_close(moved.A(x), ref, rtol=1e-6, atol=1e-7)
    other = GaussianBlur((3, 12, 12), torch.zeros(9, 9, dtype=torch.float64))
    other.load_state_dict(op.state_dict())
    torch.testing.assert_close(other.kernel, op.kernel)
    torch.testing.assert_close(other.A(x), ref, rtol=1e-12, atol=1e-12)  # tf refreshed on load
    assert other.norm_sq() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(InputError, match=r"\(B, 3, 12, 12\)"):
        op.A(torch.zeros(1, 1, 12, 12))
