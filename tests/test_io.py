"""Readers and writers of every file format (luser_cli.io), on generated files."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fixtures.files import (
    DEFAULT_AFFINE,
    make_fastmri_file,
    make_jpg,
    make_lodopab_pair,
    make_nifti_volume,
    make_npy,
    make_png,
    make_tiff,
    truncate,
    write_h5,
)

from luser_cli.errors import ConfigError, InputError
from luser_cli.io.atomic import atomic_write
from luser_cli.io.fastmri import kspace_to_image, magnitude, open_fastmri
from luser_cli.io.images import read_image, read_image_stack, write_png
from luser_cli.io.lodopab import matching_ground_truth, open_lodopab, parse_name
from luser_cli.io.measurement import read_measurement, write_measurement
from luser_cli.io.nifti import crop_resize_affine, read_nifti, write_nifti
from luser_cli.io.outputs import output_kind, tile, to_display_uint8, write_images
from luser_cli.physics import build_operator, resolve_physics

# -- atomic writes --------------------------------------------------------------------------------


def test_atomic_write_success_and_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.npy"
    with atomic_write(dest) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npy")
        np.save(tmp, np.arange(3))
    assert np.array_equal(np.load(dest), np.arange(3))

    with pytest.raises(RuntimeError), atomic_write(dest) as tmp:
        np.save(tmp, np.arange(5))
        raise RuntimeError("boom")
    assert np.array_equal(np.load(dest), np.arange(3)), "old file must be untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"], "temp file left behind"

    new = tmp_path / "new.h5"
    with pytest.raises(ValueError), atomic_write(new) as tmp, h5py.File(tmp, "w") as f:
        f["x"] = np.ones(3)
        raise ValueError("fail mid-write")
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]


def test_atomic_write_keeps_double_suffix_and_checks_folder(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "v.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"x")
    with pytest.raises(InputError, match="does not exist"), atomic_write(tmp_path / "no" / "x.h5"):
        pass
    with pytest.raises(InputError, match="folder"), atomic_write(tmp_path):
        pass


# -- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "bits"), [(1, 8), (3, 8), (4, 8), (1, 16)])
def test_png_read_exact(tmp_path: Path, channels: int, bits: int) -> None:
    expected = make_png(tmp_path / "a.png", (20, 28), channels, bits)
    img = read_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (channels, 20, 28)
    np.testing.assert_array_equal(img, expected)


def test_jpg_and_tiff(tmp_path: Path) -> None:
    expected = make_jpg(tmp_path / "a.jpg", (24, 16), 3)
    img = read_image(tmp_path / "a.jpg")
    assert img.shape == (3, 24, 16) and np.abs(img - expected).mean() < 0.03
    for channels, bits in [(1, 8), (1, 16), (3, 8), (3, 16), (1, "float")]:
        p = tmp_path / f"t{channels}{bits}.tif"
        expected = make_tiff(p, (12, 10), channels, bits)
        np.testing.assert_array_equal(read_image(p), expected)


def test_npy_layouts_and_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = {
        "hw": (rng.random((9, 7)), (1, 1, 9, 7)),
        "chw": (rng.random((3, 9, 7)), (1, 3, 9, 7)),
        "hwc": (rng.random((9, 7, 3)), (1, 3, 9, 7)),
        "zhw": (rng.random((6, 9, 7)), (6, 1, 9, 7)),
        "nchw": (rng.random((2, 1, 9, 7)), (2, 1, 9, 7)),
    }
    for name, (arr, shape) in cases.items():
        make_npy(tmp_path / f"{name}.npy", arr.astype(np.float32))
        stack = read_image_stack(tmp_path / f"{name}.npy")
        assert stack.images.shape == shape, name
    hwc = read_image_stack(tmp_path / "hwc.npy").images[0]
    np.testing.assert_allclose(hwc, np.moveaxis(cases["hwc"][0], -1, 0), rtol=1e-6)

    make_npy(tmp_path / "u8.npy", np.array([[0, 51, 255]], dtype=np.uint8))
    np.testing.assert_allclose(read_image(tmp_path / "u8.npy")[0, 0], [0, 0.2, 1])
    make_npy(tmp_path / "u16.npy", np.array([[0, 65535]], dtype=np.uint16))
    np.testing.assert_allclose(read_image(tmp_path / "u16.npy")[0, 0], [0, 1])
    make_npy(tmp_path / "b.npy", np.array([[True, False]]))
    np.testing.assert_allclose(read_image(tmp_path / "b.npy")[0, 0], [1, 0])
    make_npy(tmp_path / "f.npy", np.array([[-0.5, 2.5]], dtype=np.float64))
    np.testing.assert_allclose(read_image(tmp_path / "f.npy")[0, 0], [-0.5, 2.5])  # no rescaling


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: make_npy(p, np.array([[1, 2]], dtype=np.int32)), "signed integer"),
        (lambda p: make_npy(p, np.array([[np.nan, 1.0]])), "non-finite"),
        (lambda p: make_npy(p, np.zeros((0, 4), np.float32)), "zero-size"),
        (lambda p: make_npy(p, np.zeros((2, 2, 2, 2, 2), np.float32)), "2D, 3D or 4D"),
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "pickle"),
        (lambda p: p.write_bytes(b"not an npy file at all"), "not a valid .npy"),
    ],
)
def test_npy_errors(tmp_path: Path, make, match: str) -> None:
    p = tmp_path / "bad.npy"
    make(p)
    with pytest.raises(InputError, match=match):
        read_image_stack(p)


def _npy_header_only(path: Path, shape: tuple[int, ...]) -> None:
    """A .npy file whose header claims ``shape`` but holds (almost) no data."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        f.write(b"\0" * 16)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return struct.pack(">I", len(body)) + kind + body + crc


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` but whose data are a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data + _png_chunk(b"IEND", b""))


def test_absurd_sizes_refused_before_reading(tmp_path: Path) -> None:
    _npy_header_only(tmp_path / "huge.npy", (1, 100_000, 100_000))
    with pytest.raises(InputError, match="too large"):
        read_image_stack(tmp_path / "huge.npy")
    _npy_header_only(tmp_path / "short.npy", (1, 64, 64))
    with pytest.raises(InputError, match="truncated"):
        read_image_stack(tmp_path / "short.npy")
    _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(InputError, match="too large"):
        read_image(tmp_path / "huge.png")
    _png_header_only(tmp_path / "wide.png", 20_000, 4)  # small, but wider than MAX_SIDE
    with pytest.raises(InputError, match="too large"):
        read_image(tmp_path / "wide.png")
    _png_header_only(tmp_path / "zero.png", 0, 10)
    with pytest.raises(InputError):
        read_image(tmp_path / "zero.png")


def test_image_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello, I am not a PNG")
    with pytest.raises(InputError, match="not a readable"):
        read_image(tmp_path / "text.png")
    make_png(tmp_path / "ok.png", (64, 64), 3)
    truncate(tmp_path / "ok.png", tmp_path / "cut.png", 0.5)
    with pytest.raises(InputError, match="truncated"):
        read_image(tmp_path / "cut.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputError, match="unsupported image format"):
        read_image(tmp_path / "a.gif")


def test_write_png_roundtrip(tmp_path: Path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    write_png(tmp_path / "g.png", gray)
    np.testing.assert_allclose(read_image(tmp_path / "g.png")[0], gray / 255.0, rtol=1e-6)
    rgb = np.stack([gray, gray[::-1], 255 - gray], axis=-1)
    write_png(tmp_path / "c.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), np.moveaxis(rgb, -1, 0) / 255.0)


# -- NIfTI ----------------------------------------------------------------------------------------


def test_nifti_read_slices_affine_and_slope(tmp_path: Path) -> None:
    slices, aff = make_nifti_volume(tmp_path / "v.nii.gz", (16, 12, 5))
    vol = read_nifti(tmp_path / "v.nii.gz")
    assert vol.slices.shape == (5, 16, 12) and vol.slices.dtype == np.float32
    np.testing.assert_array_equal(vol.slices, slices)
    np.testing.assert_allclose(vol.affine, aff)
    np.testing.assert_allclose(vol.zooms, (0.5, 0.75, 2.5))

    slices, _ = make_nifti_volume(tmp_path / "s.nii", (8, 8, 2), slope=0.01)
    np.testing.assert_allclose(read_nifti(tmp_path / "s.nii").slices, slices, atol=1e-6)
    assert read_nifti(tmp_path / "s.nii").slices.max() <= 1.0 + 1e-6  # slope applied

    make_nifti_volume(tmp_path / "two.nii.gz", (8, 6))
    assert read_nifti(tmp_path / "two.nii.gz").slices.shape == (1, 8, 6)
    make_nifti_volume(tmp_path / "four1.nii.gz", (8, 6, 3, 1))
    assert read_nifti(tmp_path / "four1.nii.gz").slices.shape == (3, 8, 6)
    make_nifti_volume(tmp_path / "four2.nii.gz", (8, 6, 3, 2))
    with pytest.raises(InputError, match="4D only with one volume"):
        read_nifti(tmp_path / "four2.nii.gz")


def test_nifti_write_roundtrip_exact(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((10, 9, 4)).astype(np.float32)
    write_nifti(tmp_path / "o.nii.gz", data, DEFAULT_AFFINE)
    vol = read_nifti(tmp_path / "o.nii.gz")
    np.testing.assert_array_equal(np.moveaxis(vol.slices, 0, -1), data)
    np.testing.assert_array_equal(vol.affine, DEFAULT_AFFINE)
    write_nifti(tmp_path / "i.nii", data)
    np.testing.assert_array_equal(read_nifti(tmp_path / "i.nii").affine, np.eye(4))


def test_nifti_errors(tmp_path: Path) -> None:
    make_nifti_volume(tmp_path / "v.nii.gz", (32, 32, 8))
    truncate(tmp_path / "v.nii.gz", tmp_path / "cut.nii.gz", 0.7)
    with pytest.raises(InputError):
        read_nifti(tmp_path / "cut.nii.gz")
    make_nifti_volume(tmp_path / "raw.nii", (32, 32, 8))
    truncate(tmp_path / "raw.nii", tmp_path / "cut.nii", 0.7)
    with pytest.raises(InputError):
        read_nifti(tmp_path / "cut.nii")
    (tmp_path / "text.nii").write_text("not nifti" * 100)
    with pytest.raises(InputError, match="NIfTI"):
        read_nifti(tmp_path / "text.nii")


def test_crop_resize_affine_keeps_world_positions() -> None:
    # a 20 x 30 slice cropped to its centre 20 x 20 and resized to 10 x 10: the new voxel
    # (i', j') covers old voxels centred at top + 2 i' + 0.5, left + 2 j' + 0.5
    aff = crop_resize_affine(DEFAULT_AFFINE, 0, 5, 20, 10)
    new = aff @ np.array([3, 4, 2, 1.0])
    old = DEFAULT_AFFINE @ np.array([0 + 2 * 3 + 0.5, 5 + 2 * 4 + 0.5, 2, 1.0])
    np.testing.assert_allclose(new, old)
    np.testing.assert_allclose(crop_resize_affine(DEFAULT_AFFINE, 0, 0, 8, 8), DEFAULT_AFFINE)


# -- fastMRI --------------------------------------------------------------------------------------


def test_fastmri_train_style(tmp_path: Path) -> None:
    info = make_fastmri_file(tmp_path / "file1.h5", n_slices=3, kspace_shape=(400, 336))
    with open_fastmri(tmp_path / "file1.h5") as fm:
        assert fm.n_slices == 3 and fm.kspace_size == (400, 336)
        assert fm.crop_size == (320, 320) and fm.has_target and not fm.undersampled
        assert fm.attrs["acquisition"] == "CORPD_FBK" and fm.attrs["max"] > 0
        k = fm.kspace_slices(1, 2)
        assert k.dtype == np.complex64 and k.shape == (1, 400, 336)
        image = magnitude(kspace_to_image(k))
        np.testing.assert_allclose(image, fm.target(1, 2), rtol=1e-4, atol=1e-9)
        t = fm.kspace_tensor(0, 2)
        assert t.shape == (2, 2, 400, 336) and t.dtype == torch.float32
        np.testing.assert_array_equal(t[:, 0].numpy(), info["kspace"][:2].real)
        np.testing.assert_array_equal(t[:, 1].numpy(), info["kspace"][:2].imag)
        torch.testing.assert_close(fm.slice_tensor(1), t[1])
        with pytest.raises(InputError, match="out of range"):
            fm.slice_tensor(3)


def test_fastmri_test_style(tmp_path: Path) -> None:
    info = make_fastmri_file(tmp_path / "f.h5", with_mask=True, acceleration=4)
    with open_fastmri(tmp_path / "f.h5") as fm:
        assert fm.undersampled and not fm.has_target
        np.testing.assert_array_equal(fm.mask, info["mask"].astype(np.float32))
        assert fm.attrs["acceleration"] == 4 and fm.attrs["num_low_frequency"] >= 1


@pytest.mark.parametrize(
    ("datasets", "match"),
    [
        ({"kspace": np.zeros((2, 8, 8), np.float32)}, "complex"),
        ({"kspace": np.zeros((8, 8), np.complex64)}, r"\(slices, H, W\)"),
        ({"kspace": np.zeros((2, 4, 8, 8), np.complex64)}, "multi-coil"),
        ({"kspace": np.zeros((2, 8, 8), np.complex64), "mask": np.ones(5)}, "mask has shape"),
        ({"kspace": np.zeros((2, 8, 8), np.complex64), "mask": np.full(8, 2.0)}, "0 or 1"),
        ({"kspace": np.zeros((2, 8, 8), np.complex64), "mask": np.zeros(8)}, "no k-space"),
        (
            {
                "kspace": np.zeros((2, 8, 8), np.complex64),
                "reconstruction_esc": np.zeros((2, 4, 4), np.float32),
            },
            "reconstruction_esc has shape",
        ),
        ({"foo": np.zeros(3)}, "no 'kspace'"),
    ],
)
def test_fastmri_validation(tmp_path: Path, datasets: dict, match: str) -> None:
    write_h5(tmp_path / "bad.h5", datasets)
    with pytest.raises(InputError, match=match):
        open_fastmri(tmp_path / "bad.h5")


def test_fastmri_nan_and_attrs(tmp_path: Path) -> None:
    k = np.ones((2, 8, 8), np.complex64)
    k[1, 3, 3] = np.nan
    write_h5(tmp_path / "nan.h5", {"kspace": k})
    with open_fastmri(tmp_path / "nan.h5") as fm:
        fm.kspace_slices(0, 1)
        with pytest.raises(InputError, match="non-finite"):
            fm.check_values()
    write_h5(tmp_path / "attr.h5", {"kspace": k[:1]}, {"max": "big"})
    with pytest.raises(InputError, match="'max'"):
        open_fastmri(tmp_path / "attr.h5")


# -- LoDoPaB --------------------------------------------------------------------------------------


def test_lodopab_pair(tmp_path: Path) -> None:
    obs_path, gt_path, discs = make_lodopab_pair(tmp_path, "validation", 7, n=2)
    assert obs_path.name == "observation_validation_007.hdf5"
    assert parse_name(obs_path) == ("observation", "validation", 7)
    assert matching_ground_truth(obs_path) == gt_path
    with open_lodopab(obs_path) as obs, open_lodopab(gt_path) as gt:
        assert (obs.kind, obs.n, obs.sample_shape) == ("observation", 2, (1000, 513))
        assert (gt.kind, gt.sample_shape) == ("ground_truth", (362, 362))
        s = obs.samples(0, 1)
        assert s.shape == (1, 1000, 513) and s.dtype == np.float32
        # line integrals of the discs: the total mass is conserved at every angle
        assert s.max() > 0
        mass = s[0].sum(axis=1) * (2 * 0.13 * np.sqrt(2) / 513)
        expected = sum(v * np.pi * r**2 for (_, _, r, v) in discs[0])
        np.testing.assert_allclose(mass, expected, rtol=0.02)
    with pytest.raises(InputError, match="expected"):
        open_lodopab(gt_path, kind="observation")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.zeros((1, 100, 513), np.float32), "expected"),
        (np.zeros((1, 1000, 513), np.int16), "float32"),
        (np.zeros((1000, 513), np.float32), "expected"),
    ],
)
def test_lodopab_validation(tmp_path: Path, data: np.ndarray, match: str) -> None:
    write_h5(tmp_path / "observation_test_000.hdf5", {"data": data})
    with pytest.raises(InputError, match=match):
        open_lodopab(tmp_path / "observation_test_000.hdf5")


def test_lodopab_inf(tmp_path: Path) -> None:
    data = np.zeros((2, 1000, 513), np.float32)
    data[1, 0, 0] = np.inf
    write_h5(tmp_path / "observation_test_001.hdf5", {"data": data})
    with open_lodopab(tmp_path / "observation_test_001.hdf5") as f, pytest.raises(InputError):
        f.check_values()


# -- luser measurement files ----------------------------------------------------------------------


def _write_mri(path: Path, n: int = 2, size: int = 16, **override) -> dict:
    from luser_cli.physics import mri_masks

    phys = resolve_physics("mri4x")
    masks = mri_masks(phys, size, list(range(n)))
    op = build_operator("mri4x", size, phys, masks=masks)
    x = torch.rand(n, 2, size, size)
    y = op.restrict(op.A(x))
    kwargs = {
        "task": "mri4x",
        "image_size": (size, size),
        "physics": phys,
        "measurements": y,
        "ground_truth": x,
        "masks": masks,
        "kspace_size": (size, size),
        "noise": {"kind": "gaussian", "std": 0.0},
        "seed": 3,
        "source": "x.png",
    }
    kwargs.update(override)
    write_measurement(path, **kwargs)
    return {"x": x, "y": y, "masks": masks}


def test_measurement_roundtrip_mri(tmp_path: Path) -> None:
    ref = _write_mri(tmp_path / "m.h5")
    mf = read_measurement(tmp_path / "m.h5")
    assert (mf.task, mf.n, mf.image_size, mf.channels, mf.seed) == ("mri4x", 2, (16, 16), 2, 3)
    assert mf.physics == resolve_physics("mri4x") and mf.source == "x.png" and mf.version == 1
    np.testing.assert_array_equal(mf.measurements, ref["y"].numpy())
    np.testing.assert_array_equal(mf.ground_truth, ref["x"].numpy())
    assert mf.masks.dtype == np.uint8 and mf.masks.shape == (2, 16)
    op = mf.operator(slice(1, 2))
    torch.testing.assert_close(op.A(ref["x"][1:2]), ref["y"][1:2])
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["format"] == b"luser-measurement" and f.attrs["version"] == 1
        assert json.loads(f.attrs["physics"])["acceleration"] == 4


def test_measurement_roundtrip_deblur(tmp_path: Path) -> None:
    phys = resolve_physics("deblur", {"noise_std": 0.02})
    op = build_operator("deblur", 12, phys)
    x = torch.rand(1, 3, 12, 12)
    write_measurement(
        tmp_path / "d.h5", task="deblur", image_size=(12, 12), physics=phys,
        measurements=op.A(x), affine=DEFAULT_AFFINE, kernel=op.kernel,
    )  # fmt: skip
    mf = read_measurement(tmp_path / "d.h5")
    assert mf.physics.noise_std == 0.02 and mf.ground_truth is None and mf.masks is None
    np.testing.assert_array_equal(mf.affine, DEFAULT_AFFINE)
    torch.testing.assert_close(mf.operator().A(x), op.A(x))


def _edit(path: Path, fn) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(name: str, value):
    def fn(f):
        del f[name]
        f[name] = value

    return fn


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda f: f.attrs.__setitem__("format", "other"), "not a luser measurement"),
        (lambda f: f.attrs.__setitem__("version", 2), "newer luser"),
        (lambda f: f.attrs.__setitem__("task", "denoise"), "unknown task"),
        (lambda f: f.attrs.__setitem__("physics", "{not json"), "JSON"),
        (lambda f: f.attrs.__setitem__("physics", '{"acceleration": 0}'), "acceleration"),
        (lambda f: f.attrs.__setitem__("physics", '{"bogus": 1}'), "bogus"),
        (lambda f: f.attrs.__setitem__("image_size", [16]), "image_size"),
        (lambda f: f.attrs.__setitem__("channels", 3), "channels"),
        (lambda f: f.attrs.__delitem__("task"), "missing attribute 'task'"),
        (_replace("measurements", np.zeros((2, 2, 16, 15), np.float32)), "operator"),
        (_replace("measurements", np.full((2, 2, 16, 16), np.nan, np.float32)), "non-finite"),
        (_replace("measurements", np.zeros((2, 2, 16, 16), np.int32)), "float32"),
        (_replace("ground_truth", np.zeros((2, 1, 16, 16), np.float32)), "ground_truth"),
        (_replace("masks", np.full((2, 16), 3, np.uint8)), "0 and 1"),
        (lambda f: f.__delitem__("masks"), "masks"),
        (lambda f: f.create_dataset("extra", data=[1]), "unknown dataset"),
    ],
)
def test_measurement_validation(tmp_path: Path, edit, match: str) -> None:
    _write_mri(tmp_path / "m.h5")
    _edit(tmp_path / "m.h5", edit)
    with pytest.raises(InputError, match=match):
        read_measurement(tmp_path / "m.h5")


# -- outputs --------------------------------------------------------------------------------------


def test_output_kind() -> None:
    assert [output_kind(p) for p in ("a.png", "b.NII.GZ", "c.nii", "d.h5", "e.hdf5", "f.npy")] == [
        ".png", ".nii.gz", ".nii", ".h5", ".h5", ".npy",
    ]  # fmt: skip
    for bad in ("x.jpg", "x", "x.gz"):
        with pytest.raises(ConfigError, match="unknown output format"):
            output_kind(bad)


def test_display_mapping_and_tile() -> None:
    rgb = np.array([[[[-0.5]], [[0.5]], [[2.0]]]], np.float32)  # (1, 3, 1, 1)
    assert to_display_uint8(rgb).tolist() == [[[[0, 128, 255]]]]
    gray = np.array([[[[0.0, 0.5]]], [[[1.0, -1.0]]]], np.float32) * 4  # max 4 -> 255
    assert to_display_uint8(gray).tolist() == [[[0, 128]], [[255, 0]]]
    grid = tile(np.ones((5, 3, 4), np.uint8), gap=2)
    assert grid.shape == (2 * 3 + 2, 3 * 4 + 2 * 2) and grid.sum() == 5 * 12


def test_write_images_every_format(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((3, 1, 8, 6)).astype(np.float32) * 1e-4
    write_images(tmp_path / "o.npy", x)
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), x[:, 0])
    write_images(tmp_path / "o.h5", x, attrs={"method": "tv"})
    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_array_equal(f["reconstruction"][()], x[:, 0])
        assert f.attrs["method"] == b"tv"
    write_images(tmp_path / "o.nii.gz", x, affine=DEFAULT_AFFINE)
    vol = read_nifti(tmp_path / "o.nii.gz")
    np.testing.assert_array_equal(vol.slices, x[:, 0])
    np.testing.assert_array_equal(vol.affine, DEFAULT_AFFINE)
    write_images(tmp_path / "o.png", x)
    png = read_image(tmp_path / "o.png")
    assert png.shape == (1, 2 * 8 + 2, 2 * 6 + 2) and png.max() == 1.0
    rgb = np.random.default_rng(1).random((1, 3, 8, 6)).astype(np.float32)
    write_images(tmp_path / "c.npy", rgb)
    assert np.load(tmp_path / "c.npy").shape == (1, 3, 8, 6)
    write_images(tmp_path / "c.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), rgb[0], atol=0.5 / 255 + 1e-6)
