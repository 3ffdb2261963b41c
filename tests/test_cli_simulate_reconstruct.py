"""End to end through the CLI: ``luser simulate`` then ``luser reconstruct`` on small generated
files of every input format, every valid method and every output format."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fixtures.cli import assert_clean_error, run_cli
from fixtures.files import (
    DEFAULT_AFFINE,
    make_fastmri_file,
    make_lodopab_pair,
    make_nifti_volume,
    make_npy,
    make_png,
)

from luser_cli.io.measurement import read_measurement
from luser_cli.io.nifti import read_nifti

SIZE = 24
TV = ["--iterations", "15"]


def ok(args: list) -> str:
    code, out, err = run_cli(args)
    assert code == 0, f"luser {' '.join(map(str, args))} failed ({code}): {err}"
    assert err.strip() == "", err
    return out


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Measurement files simulated once per task from PNG / npy / NIfTI inputs."""
    d = tmp_path_factory.mktemp("scans")
    make_png(d / "rgb.png", (30, SIZE), channels=3)  # non-square: centre-cropped to 24 x 24
    make_png(d / "gray.png", (SIZE, SIZE), channels=1, bits=16)
    make_npy(d / "vol.npy", np.random.default_rng(0).random((5, SIZE, SIZE)).astype(np.float32))
    make_nifti_volume(d / "vol.nii.gz", (SIZE, SIZE, 3))
    out = {
        "deblur": d / "deblur.h5",
        "ct": d / "ct.h5",
        "mri4x": d / "mri4x.h5",
        "ct_nifti": d / "ct_nifti.h5",
    }
    ok(["simulate", d / "rgb.png", "--task", "deblur", "-o", out["deblur"], "--seed", "1"])
    ok(["simulate", d / "gray.png", "-t", "ct", "-o", out["ct"]])
    ok(["simulate", d / "vol.npy", "-t", "mri4x", "-o", out["mri4x"]])
    ok(["simulate", d / "vol.nii.gz", "-t", "ct", "-o", out["ct_nifti"]])
    out["dir"] = d
    return out


def test_simulate_writes_complete_measurement_files(scans: dict[str, Path]) -> None:
    deblur = read_measurement(scans["deblur"])
    assert deblur.ground_truth.shape == (1, 3, SIZE, SIZE) and deblur.seed == 1
    assert deblur.source == "rgb.png" and deblur.noise["kind"] == "gaussian"
    ct = read_measurement(scans["ct"])
    assert ct.ground_truth.shape == (1, 1, SIZE, SIZE) and ct.angles is not None
    assert ct.measurements.shape[1:] == tuple(ct.operator().measurement_shape())
    mri = read_measurement(scans["mri4x"])
    assert mri.n == 5 and mri.masks.shape == (5, SIZE) and mri.kspace_size == (SIZE, SIZE)
    assert len({m.tobytes() for m in mri.masks}) == 5, "masks are seeded per slice"
    np.testing.assert_array_equal(mri.ground_truth[:, 1], 0)  # imaginary part of a real image
    nifti = read_measurement(scans["ct_nifti"])
    assert nifti.n == 3
    np.testing.assert_array_equal(nifti.affine, DEFAULT_AFFINE)


def test_simulate_reads_images_by_dtype_range_without_rescaling(scans: dict[str, Path]) -> None:
    from luser_cli.io.images import read_image

    gt = read_measurement(scans["ct"]).ground_truth[0]
    np.testing.assert_allclose(gt, read_image(scans["dir"] / "gray.png"), rtol=1e-6)


def test_simulate_is_reproducible_and_batch_independent(tmp_path: Path) -> None:
    make_npy(tmp_path / "v.npy", np.random.default_rng(2).random((6, 16, 16)).astype(np.float32))
    for name, extra in [("a", []), ("b", ["--batch-size", "4"]), ("c", ["--seed", "9"])]:
        ok(["simulate", tmp_path / "v.npy", "-t", "deblur", "-o", tmp_path / f"{name}.h5", *extra])
    a, b, c = (read_measurement(tmp_path / f"{n}.h5").measurements for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_simulate_image_size_and_physics_override(tmp_path: Path) -> None:
    make_png(tmp_path / "x.png", (40, 40), channels=3)
    ok(["simulate", tmp_path / "x.png", "-t", "mri8x", "-o", tmp_path / "m.h5",
        "--image-size", "16", "--physics", "noise_std=0.001"])  # fmt: skip
    mf = read_measurement(tmp_path / "m.h5")
    assert mf.image_size == (16, 16) and mf.physics.noise_std == 0.001
    assert mf.physics.acceleration == 8 and mf.measurements.shape == (1, 2, 16, 16)


def test_simulate_nifti_resize_moves_affine(tmp_path: Path) -> None:
    make_nifti_volume(tmp_path / "v.nii", (20, 30, 2))
    ok(["simulate", tmp_path / "v.nii", "-t", "deblur", "-o", tmp_path / "s.h5",
        "--image-size", "10"])  # fmt: skip
    aff = read_measurement(tmp_path / "s.h5").affine
    # new voxel (0, 0) is the mean of old voxels (0..1, 5..6): centre at old (0.5, 5.5)
    np.testing.assert_allclose(aff @ [0, 0, 1, 1], DEFAULT_AFFINE @ [0.5, 5.5, 1, 1])


# -- reconstruct luser measurement files ----------------------------------------------------------


def psnr(x: np.ndarray, gt: np.ndarray, data_range: float) -> float:
    return float(10 * np.log10(data_range**2 / np.mean((x - gt) ** 2)))


# Least PSNR (dB) against the ground truth, about 0.5-1 dB under what each method measured
# (deblur 18.3 / 16.7 / 21.1, CT 16.4 / 21.8 / 23.1, MRI on a random-noise volume 12.5 / 12.5 /
# 12.4). Wrong reconstructions score far lower: a constant image at the ground truth's mean
# 11.9 / 13.7 / 10.8 dB, zeros 6.9 / 8.3 / 4.8 dB, the right one transposed 9.8-14.3 dB.
@pytest.mark.parametrize(
    ("scan", "method", "extra", "least_psnr"),
    [
        ("deblur", "input", [], 17.5),
        ("deblur", "adjoint", [], 16.0),
        ("deblur", "tv", TV, 20.3),
        ("ct", "adjoint", [], 15.8),
        ("ct", "fbp", [], 21.0),
        ("ct", "tv", TV, 22.3),
        ("mri4x", "zero-filled", [], 12.0),
        ("mri4x", "adjoint", [], 12.0),
        ("mri4x", "tv", TV, 12.0),
    ],
)
def test_reconstruct_methods_to_npy(
    scans: dict[str, Path],
    tmp_path: Path,
    scan: str,
    method: str,
    extra: list[str],
    least_psnr: float,
) -> None:
    out = tmp_path / "x.npy"
    text = ok(["reconstruct", scans[scan], "-o", out, "-m", method, *extra])
    assert f"wrote {out}" in text
    mf = read_measurement(scans[scan])
    x = np.load(out)
    channels = mf.ground_truth.shape[1]
    want = (mf.n, SIZE, SIZE) if channels != 3 else (mf.n, 3, SIZE, SIZE)
    assert x.shape == want and x.dtype == np.float32 and np.isfinite(x).all()
    # units: the reconstruction is in the ground truth's units (MRI: its magnitude)
    gt = mf.ground_truth if channels == 3 else np.linalg.norm(mf.ground_truth, axis=1)
    rng = float(gt.max() - gt.min())
    got = psnr(x, gt, rng)
    assert got >= least_psnr, f"{scan}/{method}: {got:.2f} dB < {least_psnr} dB"
    constant = psnr(np.full_like(gt, gt.mean()), gt, rng)
    assert got >= constant + 1.0, f"{scan}/{method}: {got:.2f} dB, a constant image {constant:.2f}"
    assert got >= psnr(np.swapaxes(x, -1, -2), gt, rng) + 1.0, "orientation"
    if method == "input":
        np.testing.assert_array_equal(x, mf.measurements)
    if scan == "mri4x" and method == "zero-filled":
        op = mf.operator()
        y = mf.measurements_tensor()
        np.testing.assert_allclose(x, op.A_adjoint(y).norm(dim=1).numpy(), atol=1e-6)


def test_reconstruct_output_formats(scans: dict[str, Path], tmp_path: Path) -> None:
    from luser_cli.io.images import read_image

    ok(["reconstruct", scans["ct_nifti"], "-o", tmp_path / "v.nii.gz", "-m", "fbp"])
    vol = read_nifti(tmp_path / "v.nii.gz")
    assert vol.slices.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(vol.affine, DEFAULT_AFFINE)  # the input's affine, preserved
    ok(["reconstruct", scans["mri4x"], "-o", tmp_path / "m.nii", "-m", "zero-filled"])
    np.testing.assert_array_equal(read_nifti(tmp_path / "m.nii").affine, np.eye(4))

    ok(["reconstruct", scans["mri4x"], "-o", tmp_path / "m.h5", "-m", "zero-filled"])
    with h5py.File(tmp_path / "m.h5") as f:
        rec = f["reconstruction"]
        assert rec.shape == (5, SIZE, SIZE) and rec.dtype == np.float32
        assert f.attrs["task"] == b"mri4x" and f.attrs["method"] == b"zero-filled"

    ok(["reconstruct", scans["mri4x"], "-o", tmp_path / "grid.png", "-m", "zero-filled"])
    grid = read_image(tmp_path / "grid.png")
    assert grid.shape == (1, 2 * SIZE + 2, 3 * SIZE + 4)  # 5 slices -> 2 rows x 3 columns
    ok(["reconstruct", scans["deblur"], "-o", tmp_path / "rgb.png", "-m", "input"])
    assert read_image(tmp_path / "rgb.png").shape == (3, SIZE, SIZE)


# -- fastMRI --------------------------------------------------------------------------------------


def test_reconstruct_fastmri_fully_sampled(tmp_path: Path) -> None:
    make_fastmri_file(tmp_path / "file1.h5", n_slices=2, kspace_shape=(48, 40))
    code, _, err = run_cli(["reconstruct", tmp_path / "file1.h5", "-o", tmp_path / "r.h5",
                            "-m", "zero-filled"])  # fmt: skip
    assert_clean_error(code, err, expect="--task mri4x")
    assert not (tmp_path / "r.h5").exists()
    ok(["reconstruct", tmp_path / "file1.h5", "-o", tmp_path / "r.h5", "-m", "zero-filled",
        "--task", "mri4x"])  # fmt: skip
    ok(["reconstruct", tmp_path / "file1.h5", "-o", tmp_path / "r8.h5", "-m", "zero-filled",
        "--task", "mri8x"])  # fmt: skip
    ok(["reconstruct", tmp_path / "file1.h5", "-o", tmp_path / "tv.npy", "-m", "tv",
        "--task", "mri4x", *TV])  # fmt: skip
    with h5py.File(tmp_path / "r.h5") as f4, h5py.File(tmp_path / "r8.h5") as f8:
        r4, r8 = f4["reconstruction"][()], f8["reconstruction"][()]
    with h5py.File(tmp_path / "file1.h5") as f:
        target = f["reconstruction_esc"][()]
    assert r4.shape == target.shape == (2, 48, 40)
    e4, e8 = (np.linalg.norm(r - target) / np.linalg.norm(target) for r in (r4, r8))
    assert 0 < e4 < e8 < 1, (e4, e8)  # 8x loses more than 4x
    # masks are seeded by file name and slice: the same file reconstructs identically
    ok(["reconstruct", tmp_path / "file1.h5", "-o", tmp_path / "again.h5", "-m", "zero-filled",
        "-t", "mri4x"])  # fmt: skip
    with h5py.File(tmp_path / "again.h5") as f:
        np.testing.assert_array_equal(f["reconstruction"][()], r4)


def test_reconstruct_fastmri_real_size_crop(tmp_path: Path) -> None:
    """A test-style file with a full mask at fastMRI's size: zero-filled == reconstruction_esc."""
    info = make_fastmri_file(tmp_path / "full.h5", 1, (400, 336), with_mask=True, acceleration=1)
    assert info["mask"].all()
    ok(["reconstruct", tmp_path / "full.h5", "-o", tmp_path / "r.npy", "-m", "zero-filled"])
    r = np.load(tmp_path / "r.npy")
    assert r.shape == (1, 320, 320)
    np.testing.assert_allclose(r, info["target"], rtol=1e-4, atol=1e-3 * info["target"].max())


def test_reconstruct_fastmri_with_mask(tmp_path: Path) -> None:
    info = make_fastmri_file(tmp_path / "test1.h5", 2, (48, 40), with_mask=True, acceleration=4)
    ok(["reconstruct", tmp_path / "test1.h5", "-o", tmp_path / "zf.npy", "-m", "zero-filled"])
    ok(["reconstruct", tmp_path / "test1.h5", "-o", tmp_path / "tv.npy", "-m", "tv", *TV])
    from luser_cli.io.fastmri import kspace_to_image

    zf = np.load(tmp_path / "zf.npy")
    np.testing.assert_allclose(zf, np.abs(kspace_to_image(info["kspace"])), rtol=1e-4, atol=1e-9)
    tv = np.load(tmp_path / "tv.npy")
    target = info["target"]
    assert tv.shape == zf.shape == (2, 48, 40)
    vmax = float(target.max())  # fastMRI's convention: the volume's maximum
    p_zf, p_tv = psnr(zf, target, vmax), psnr(tv, target, vmax)
    # measured: zero-filled 24.0 dB, TV 25.2 dB; a constant image at the mean 15.4 dB
    assert p_zf >= 23.0 and p_tv >= p_zf + 0.5, (p_zf, p_tv)


# -- LoDoPaB --------------------------------------------------------------------------------------


def test_reconstruct_lodopab_observation(tmp_path: Path) -> None:
    obs, gt_path, _ = make_lodopab_pair(tmp_path, "test", 0, n=1)
    ok(["reconstruct", obs, "-o", tmp_path / "fbp.npy", "-m", "fbp"])
    x = np.load(tmp_path / "fbp.npy")
    with h5py.File(gt_path) as f:
        gt = f["data"][()]
    assert x.shape == gt.shape == (1, 362, 362)
    mse = np.mean((x - gt) ** 2)
    psnr = 10 * np.log10((gt.max() - gt.min()) ** 2 / mse)
    assert psnr > 25, psnr
    # oriented like the ground truth: much closer to it than to its transpose or flips
    for wrong in (gt.transpose(0, 2, 1), gt[:, ::-1], gt[:, :, ::-1]):
        assert mse < 0.5 * np.mean((x - wrong) ** 2)
    code, _, err = run_cli(["reconstruct", gt_path, "-o", tmp_path / "g.npy", "-m", "fbp"])
    assert_clean_error(code, err, expect="ground-truth")


def test_reconstruct_lodopab_matches_operator_convention(tmp_path: Path) -> None:
    """The fixture's analytic disc sinogram (ODL's conventions, as LoDoPaB) agrees with the CT
    operator applied to the disc image: the geometry and orientation conventions match."""
    from fixtures.files import disc_image, disc_sinogram, random_discs

    from luser_cli.physics import build_operator

    discs = random_discs(np.random.default_rng(3))
    # every 50th of LoDoPaB's 1000 angles keeps this fast; the angles are the same
    op = build_operator("ct", 362, {"angles_total": 1000, "angle_step": 50})
    with torch.no_grad():
        sino = op.A(torch.from_numpy(disc_image(discs))[None, None])[0, 0].numpy()
    ref = disc_sinogram(discs)[::50]
    rel = np.linalg.norm(sino - ref) / np.linalg.norm(ref)
    assert rel < 0.05, rel


def test_reconstruct_device_and_progress_flags(scans: dict[str, Path], tmp_path: Path) -> None:
    ok(["reconstruct", scans["mri4x"], "-o", tmp_path / "a.npy", "-m", "adjoint",
        "--device", "cpu", "--no-progress", "-b", "2"])  # fmt: skip
    ok(["reconstruct", scans["mri4x"], "-o", tmp_path / "b.npy", "-m", "adjoint"])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
