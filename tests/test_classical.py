"""Classical reconstructions: the TV solver (PDHG) and the per-task baselines."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from skimage.data import astronaut, camera, shepp_logan_phantom
from skimage.restoration import denoise_tv_chambolle
from skimage.transform import resize

from luser_cli.classical import (
    CLASSICAL_METHODS,
    default_method,
    methods_for,
    reconstruct_classical,
    tv_reconstruct,
)
from luser_cli.classical.tv import divergence, gradient, total_variation, tv_objective
from luser_cli.errors import ConfigError
from luser_cli.operators.base import LinearOperator
from luser_cli.physics import build_noise, build_operator, initial_estimate, simulate

pytestmark = pytest.mark.usefixtures("one_thread")


class Identity(LinearOperator):
    """``A = I`` on ``(C, H, W)`` images: TV reconstruction is then TV denoising (ROF).

    Declares its (flat) transfer function, so the solver treats it as a circulant operator and
    takes the exact data prox path."""

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    def measurement_shape(self) -> tuple[int, ...]:
        return self.image_shape

    def transfer_function(self) -> torch.Tensor:
        return torch.ones(self.image_shape[1:], dtype=torch.complex128)


def phantom(n: int) -> np.ndarray:
    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)


def task_image(task: str, n: int) -> torch.Tensor:
    """A ``(1, C, n, n)`` float64 test image in the task's layout and units."""
    if task == "deblur":
        rgb = resize(astronaut()[:300, 100:400] / 255.0, (n, n), anti_aliasing=True)
        return torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()
    if task == "ct":
        return torch.from_numpy(phantom(n))[None, None]
    gray = torch.from_numpy(resize(camera() / 255.0, (n, n), anti_aliasing=True))[None, None]
    return torch.cat([gray, torch.zeros_like(gray)], dim=1)


def simulated(
    task: str, n: int, seed: int = 0
) -> tuple[LinearOperator, torch.Tensor, torch.Tensor]:
    op = build_operator(task, n).to(torch.float64)
    x = task_image(task, n)
    y = simulate(op, build_noise(task), x, torch.Generator().manual_seed(seed))
    return op, x, y


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of magnitudes, data range = the target's range."""
    if x.shape[1] == 2:
        x, ref = x.norm(dim=1), ref.norm(dim=1)
    mse = float(((x - ref) ** 2).mean())
    return 10 * np.log10(float(ref.max() - ref.min()) ** 2 / mse)


# -- the TV building blocks ---------------------------------------------------------------------
def test_divergence_is_minus_the_adjoint_of_gradient(gen: torch.Generator) -> None:
    x = torch.randn(2, 3, 9, 7, generator=gen, dtype=torch.float64)
    p = torch.randn(2, 3, 2, 9, 7, generator=gen, dtype=torch.float64)
    lhs = (gradient(x) * p).sum()
    rhs = -(x * divergence(p)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert float((gradient(x)[:, :, 0, -1] ** 2).sum()) == 0  # Neumann: no difference past the edge


def test_total_variation_is_vectorial_and_isotropic() -> None:
    x = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    x[:, :, :, 2:] = 1.0  # a vertical edge in both channels: 4 pixels with |grad| = sqrt(2)
    assert float(total_variation(x)) == pytest.approx(4 * 2**0.5)


# -- TV denoising = skimage's Chambolle ROF -----------------------------------------------------
def test_tv_with_identity_matches_skimage_rof(gen: torch.Generator) -> None:
    """skimage minimises ``||u - f||^2 / 2 + weight * TV(u)`` (its ``weight`` = 1/lambda), with
    the same forward differences and Neumann boundary: our weight is its weight."""
    f = phantom(48) + 0.1 * np.random.default_rng(0).standard_normal((48, 48))
    weight = 0.15
    ref = denoise_tv_chambolle(f, weight=weight, eps=1e-12, max_num_iter=3000)
    op = Identity((1, 48, 48))
    y = torch.from_numpy(f)[None, None]
    u = tv_reconstruct(op, y, weight, iterations=600, balance=0.1)
    assert np.abs(u[0, 0].numpy() - ref).max() < 1e-3
    generic = tv_reconstruct(op, y, weight, iterations=600, balance=0.3, generic=True)
    assert np.abs(generic[0, 0].numpy() - ref).max() < 3e-3
    j_ours = float(tv_objective(op, u, y, weight))
    j_ref = float(tv_objective(op, torch.from_numpy(ref)[None, None], y, weight))
    assert j_ours <= j_ref * (1 + 1e-5)


def test_pdhg_objective_decreases_generic_and_prox_paths() -> None:
    op, _, y = simulated("mri4x", 32)
    weight = 0.01 * float(op.A_adjoint(y).norm(dim=1).max())

    def run(iterations: int, generic: bool) -> torch.Tensor:
        return tv_reconstruct(op, y, weight, iterations, generic=generic, balance=0.3)

    for generic in (True, False):
        objective = [
            float(tv_objective(op, run(it, generic), y, weight)) for it in (0, 20, 80, 320)
        ]
        assert all(b < a for a, b in itertools.pairwise(objective))
        assert objective[-2] - objective[-1] < 0.1 * (objective[0] - objective[-1])
    # both paths reach the same minimiser
    a, b = run(600, True), run(600, False)
    assert float((a - b).norm() / b.norm()) < 3e-3


def test_blur_prox_path_matches_generic_path() -> None:
    op, _, y = simulated("deblur", 24)
    a = tv_reconstruct(op, y, 2e-3, 600, x0=y, generic=True)
    b = tv_reconstruct(op, y, 2e-3, 600, x0=y, generic=False)
    assert float((a - b).norm() / b.norm()) < 2e-3


def test_nonneg_constraint_and_tolerance_stop() -> None:
    op, _, y = simulated("ct", 32)
    calls: list[int] = []
    x = tv_reconstruct(
        op, y, 1e-5, 2000, nonneg=True, tol=1e-3, progress=lambda k, n: calls.append(k)
    )
    assert float(x.min()) >= 0
    assert 1 <= len(calls) < 2000 and calls == list(range(1, len(calls) + 1))


def test_float32_and_zero_data() -> None:
    _, _, y = simulated("ct", 24)
    op32 = build_operator("ct", 24)
    x = reconstruct_classical("tv", "ct", op32, y.float(), iterations=20)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    zero = reconstruct_classical(
        "tv", "mri4x", build_operator("mri4x", 16), torch.zeros(1, 2, 16, 16)
    )
    assert torch.equal(zero, torch.zeros_like(zero))


def test_padded_kspace_takes_the_generic_path() -> None:
    """fastMRI layout: k-space larger than the image (no cheap prox); TV still beats zero-filled."""
    op = build_operator("mri4x", 32, kspace_size=(48, 40)).to(torch.float64)
    x = task_image("mri4x", 32)
    y = op.A(x)
    zf = reconstruct_classical("zero-filled", "mri4x", op, y)
    tv = reconstruct_classical("tv", "mri4x", op, y)
    assert tv.shape == x.shape
    assert psnr(tv, x) >= psnr(zf, x) + 0.5


# -- methods ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "baseline", "n", "margin"),
    [
        ("deblur", "input", 48, 1.0),
        ("ct", "fbp", 48, 1.0),
        ("mri4x", "zero-filled", 48, 0.5),
        ("mri8x", "zero-filled", 48, 0.5),
    ],
)
def test_tv_beats_the_baseline(task: str, baseline: str, n: int, margin: float) -> None:
    op, x, y = simulated(task, n)
    base = reconstruct_classical(baseline, task, op, y)
    tv = reconstruct_classical("tv", task, op, y)
    assert tv.shape == x.shape
    assert psnr(tv, x) >= psnr(base, x) + margin


def test_simple_methods() -> None:
    for task in ("ct", "mri4x"):
        op, _, y = simulated(task, 16)
        adj = reconstruct_classical("adjoint", task, op, y)
        assert torch.allclose(adj, initial_estimate(task, op, y))
    op, _, y = simulated("mri8x", 16)
    assert torch.allclose(reconstruct_classical("zero-filled", "mri8x", op, y), op.A_adjoint(y))
    op, _, y = simulated("deblur", 16)
    assert torch.equal(reconstruct_classical("input", "deblur", op, y), y)
    assert torch.allclose(reconstruct_classical("adjoint", "deblur", op, y), op.A_adjoint(y))


def test_initial_estimates() -> None:
    """auto = the paper's (y for deblur, scaled adjoint otherwise); fbp = the classical FBP."""
    op, _, y = simulated("ct", 16)
    fbp = reconstruct_classical("fbp", "ct", op, y)
    assert torch.allclose(initial_estimate("ct", op, y, "fbp"), fbp)
    assert torch.allclose(initial_estimate("ct", op, y, "adjoint"), initial_estimate("ct", op, y))
    assert not torch.allclose(initial_estimate("ct", op, y), fbp)
    op, _, y = simulated("deblur", 16)
    assert torch.equal(initial_estimate("deblur", op, y), y)
    assert torch.allclose(initial_estimate("deblur", op, y, "adjoint"), op.A_adjoint(y))
    with pytest.raises(ConfigError, match="'fbp' needs task ct"):
        initial_estimate("deblur", op, y, "fbp")
    with pytest.raises(ConfigError, match="unknown initial estimate 'sirt'"):
        initial_estimate("deblur", op, y, "sirt")


def test_method_registry() -> None:
    assert CLASSICAL_METHODS == ("input", "adjoint", "fbp", "zero-filled", "tv")
    assert methods_for("ct") == ("adjoint", "fbp", "tv")
    assert methods_for("mri8x") == ("zero-filled", "adjoint", "tv")
    assert all(default_method(t) == "tv" for t in ("deblur", "ct", "mri4x", "mri8x"))


@pytest.mark.parametrize(
    ("method", "task", "message"),
    [
        ("fbp", "mri4x", "method 'fbp' needs task ct; task mri4x offers: zero-filled, adjoint, tv"),
        ("input", "ct", "method 'input' needs task deblur; task ct offers: adjoint, fbp, tv"),
        ("zero-filled", "deblur", "method 'zero-filled' needs task mri4x or mri8x"),
        ("sart", "ct", "unknown method 'sart'; choose one of: input, adjoint, fbp"),
    ],
)
def test_method_task_mismatch_is_a_config_error(method: str, task: str, message: str) -> None:
    op = build_operator(task, 16)
    y = torch.zeros(1, *op.measurement_shape())
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        reconstruct_classical(method, task, op, y)
    assert "\n" not in str(err.value)


def test_bad_tv_settings_are_config_errors() -> None:
    op = build_operator("deblur", 16)
    y = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="TV weight"):
        reconstruct_classical("tv", "deblur", op, y, tv_weight=-1.0)
    with pytest.raises(ConfigError, match="iterations"):
        reconstruct_classical("tv", "deblur", op, y, iterations=-3)


@pytest.mark.parametrize("c", [1e-4, 250.0])
def test_relative_weight_makes_tv_scale_equivariant(c: float) -> None:
    """fastMRI k-space is ~1e-4: the same default must give the same image, scaled."""
    op, _, y = simulated("mri4x", 32)
    ref = reconstruct_classical("tv", "mri4x", op, y, iterations=100)
    scaled = reconstruct_classical("tv", "mri4x", op, c * y, iterations=100)
    assert torch.allclose(scaled, c * ref, rtol=1e-6, atol=1e-9 * c)


def test_batch_consistency_ct_and_mri() -> None:
    op, x, _ = simulated("ct", 24)
    noise = build_noise("ct")
    xs = torch.cat([x, 0.5 * x.flip(-1)])
    ys = simulate(op, noise, xs, torch.Generator().manual_seed(3))
    both = reconstruct_classical("tv", "ct", op, ys, iterations=60)
    for i in range(2):
        one = reconstruct_classical("tv", "ct", op, ys[i : i + 1], iterations=60)
        assert torch.allclose(both[i : i + 1], one, rtol=1e-9, atol=1e-12)
    # MRI with one mask per sample, and a tolerance that stops the samples at different times
    from luser_cli.physics import mri_masks
    from luser_cli.tasks import get_task

    masks = mri_masks(get_task("mri4x").physics_defaults, 24, [5, 6])
    op2 = build_operator("mri4x", 24, masks=masks).to(torch.float64)
    xm = torch.cat([task_image("mri4x", 24), 3 * task_image("mri4x", 24).flip(-2)])
    ym = op2.A(xm)
    both = tv_reconstruct(op2, ym, torch.tensor([1e-3, 3e-3]), 300, tol=1e-4)
    for i in range(2):
        single = build_operator("mri4x", 24, masks=masks[i : i + 1]).to(torch.float64)
        one = tv_reconstruct(single, ym[i : i + 1], [1e-3, 3e-3][i], 300, tol=1e-4)
        assert torch.allclose(both[i : i + 1], one, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    op, _, y = simulated("mri4x", 32)
    cpu = reconstruct_classical("tv", "mri4x", op, y, iterations=50)
    gpu = reconstruct_classical("tv", "mri4x", op.to("cuda"), y.cuda(), iterations=50)
    assert torch.allclose(gpu.cpu(), cpu, rtol=1e-6, atol=1e-9)
