"""Training / evaluation data: built-in phantoms and photo patches, real data set folders.

Every real format is generated small with ``tests/fixtures/files.py``. (Test names avoid the
substring "ct" except for CT cases, so that ``-k "not ct"`` only drops those.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.files import (
    make_fastmri_file,
    make_jpg,
    make_lodopab_pair,
    make_nifti_volume,
    make_png,
    write_h5,
)
from torch.utils.data import DataLoader

from luser_cli.data.builtin import BuiltinDataset
from luser_cli.data.builtin_images import CT_PHOTO_PEAK
from luser_cli.data.celeba import CelebADataset
from luser_cli.data.fastmri import FastMRIDataset
from luser_cli.data.folder import FolderDataset, unit_range
from luser_cli.data.lodopab import LoDoPaBDataset
from luser_cli.data.phantoms import ellipse_parameters, random_ellipses, rasterize_ellipses
from luser_cli.data.photos import PHOTO_SPLITS, load_photo, photo_patch, random_patch
from luser_cli.data.scans import load_slices, scan_patch
from luser_cli.data.sources import detect_kind, open_dataset
from luser_cli.data.splits import (
    SPLITS,
    item_seed,
    normalize_split,
    select_split,
    split_of_seed,
    stable_unit,
)
from luser_cli.errors import ConfigError, InputError
from luser_cli.operators.masks import mask_seed

TASK_CHANNELS = {"deblur": 3, "ct": 1, "mri4x": 2, "mri8x": 2}


def _check_item(item, channels: int, size: int) -> None:
    image, meta = item
    assert image.dtype == torch.float32 and image.shape == (channels, size, size)
    assert torch.isfinite(image).all()
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    if channels == 2:
        assert torch.all(image[1] == 0)  # real-valued images: imaginary part 0
        assert isinstance(meta["mask_seed"], int) and 0 <= meta["mask_seed"] < 2**32
    else:
        assert "mask_seed" not in meta
    assert isinstance(meta["index"], int)
    assert meta["scale"].dtype == torch.float32 and float(meta["scale"]) > 0


# -- phantoms -------------------------------------------------------------------------------------


def test_ellipses_range_and_determinism() -> None:
    a, b, c = random_ellipses(64, 7), random_ellipses(64, 7), random_ellipses(64, 8)
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert a.min() == 0.0 and a.max() == 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    big = random_ellipses(362, 0)  # the LoDoPaB size (fast: a few ms)
    assert big.shape == (362, 362) and big.min() == 0.0 and big.max() == 1.0


def test_ellipse_rasterisation_matches_pixelwise_test() -> None:
    ellipses = ellipse_parameters(np.random.default_rng(3), 30)
    n = 45
    h = 2.0 / n
    centres = -1 + (np.arange(n) + 0.5) * h
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    ref = np.zeros((n, n))
    for v, a, b, x0, y0, t in ellipses:
        u, w = xx - x0, yy - y0
        c, s = np.cos(t), np.sin(t)
        ref += v * ((((u * c + w * s) / a) ** 2 + ((-u * s + w * c) / b) ** 2) <= 1)
    np.testing.assert_allclose(rasterize_ellipses(ellipses, n), ref, atol=1e-12)


# -- splits ---------------------------------------------------------------------------------------


def test_item_seeds_of_splits_never_meet() -> None:
    seen: dict[int, str] = {}
    for base in (0, 1, 5):
        for split in SPLITS:
            for i in (0, 1, 999, 2**30 - 1):
                s = item_seed(base, split, i)
                assert seen.setdefault(s, split) == split
                assert split_of_seed(s) == split
    with pytest.raises(ConfigError):
        item_seed(-1, "train", 0)
    with pytest.raises(ConfigError):
        item_seed(0, "val", 2**30)


def test_hash_split_is_a_stable_partition() -> None:
    # SHA-256 based, so the same on every run (Python's hash() is salted per process)
    assert stable_unit("file1.png:0") == stable_unit("file1.png:0")
    assert 0 <= stable_unit("a") < 1 and stable_unit("a", 1) != stable_unit("a", 0)
    # pinned: the first 8 bytes of sha256("0:file1.png:0") / 2^64
    assert round(stable_unit("file1.png:0"), 12) == 0.539420131006
    keys = [f"img{i:03d}.png:0" for i in range(50)]
    parts = {s: select_split(keys, s) for s in SPLITS}
    assert sorted(i for part in parts.values() for i in part) == list(range(50))
    assert [len(parts[s]) for s in SPLITS] == [40, 5, 5]
    assert select_split(list(reversed(keys)), "test") == sorted(49 - i for i in parts["test"])
    few = ["a", "b", "c"]
    assert all(len(select_split(few, s)) == 1 for s in SPLITS)
    assert normalize_split("validation") == "val"
    with pytest.raises(ConfigError, match="unknown split"):
        normalize_split("dev")


# -- photos and built-in data ---------------------------------------------------------------------


def test_photo_splits_are_disjoint_and_load_offline() -> None:
    names = [n for s in SPLITS for n in PHOTO_SPLITS[s]]
    assert len(names) == len(set(names))
    for name in names:
        photo = load_photo(name)
        assert photo.shape[0] == 3 and photo.dtype == np.float32 and 0 <= photo.min() <= 1
    a, b = photo_patch("test", 48, 11), photo_patch("test", 48, 11)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 48, 48) and not np.array_equal(a, photo_patch("test", 48, 12))


@pytest.mark.parametrize("task", ["deblur", "ct", "mri4x"])
def test_builtin_items(task: str) -> None:
    channels = TASK_CHANNELS[task]
    sets = {s: BuiltinDataset(task, s, size=4, image_size=40, seed=3) for s in SPLITS}
    for split, ds in sets.items():
        assert len(ds) == 4
        for i in range(len(ds)):
            _check_item(ds[i], channels, 40)
            assert ds[i][1]["index"] == i
        again = BuiltinDataset(task, split, size=4, image_size=40, seed=3)
        torch.testing.assert_close(ds[2][0], again[2][0], rtol=0, atol=0)
    images = [ds[i][0] for ds in sets.values() for i in range(4)]
    assert all(not torch.equal(x, y) for k, x in enumerate(images) for y in images[k + 1 :])
    other_seed = BuiltinDataset(task, "train", size=4, image_size=40, seed=4)
    assert not torch.equal(other_seed[0][0], sets["train"][0][0])
    with pytest.raises(IndexError):
        sets["val"][4]


def test_scan_slices_load_offline_and_splits_differ() -> None:
    per_split = {s: load_slices(s) for s in SPLITS}
    for slices in per_split.values():
        assert slices and all(x.ndim == 3 and x.shape[0] == 1 for x in slices)
        assert all(x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1 for x in slices)
    train = {x.tobytes() for x in per_split["train"]}
    assert not train & {x.tobytes() for s in ("val", "test") for x in per_split[s]}
    a, b = scan_patch("train", 48, 5), scan_patch("train", 48, 5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 48, 48) and float(a.mean()) > 0.05
    assert not np.array_equal(a, scan_patch("train", 48, 6))


def test_random_patch_zooms_in_below_one() -> None:
    """min_zoom < 1 upsamples a small crop: the patch is smoother than a 1:1 crop."""
    rng = np.random.default_rng(0)
    noise = rng.random((1, 64, 64)).astype(np.float32)
    crisp = random_patch(noise, 32, np.random.default_rng(1), max_zoom=1.0, augment=False)
    smooth = random_patch(
        noise, 32, np.random.default_rng(1), min_zoom=0.25, max_zoom=0.25, augment=False
    )
    assert smooth.shape == crisp.shape == (1, 32, 32)
    assert np.abs(np.diff(smooth, axis=-1)).mean() < 0.5 * np.abs(np.diff(crisp, axis=-1)).mean()


@pytest.mark.parametrize("kind", ["scans", "mix-scans"])
def test_builtin_scan_kinds(kind: str) -> None:
    mri = BuiltinDataset("mri4x", "train", size=6, image_size=40, seed=1, kind=kind)
    ct = BuiltinDataset("ct", "val", size=3, image_size=40, seed=1, kind=kind)
    for ds, channels in ((mri, 2), (ct, 1)):
        for i in range(len(ds)):
            _check_item(ds[i], channels, 40)
    assert mri.item_name(0).startswith(f"builtin-{kind}-train")
    assert float(ct[0][0].max()) <= CT_PHOTO_PEAK[1] + 1e-6


def test_builtin_loader_batches() -> None:
    ds = open_dataset("mri8x", "train", 24, None, seed=0, size=6)
    images, meta = next(iter(DataLoader(ds, batch_size=3)))
    assert images.shape == (3, 2, 24, 24)
    assert meta["index"].tolist() == [0, 1, 2] and meta["mask_seed"].dtype == torch.int64
    assert meta["scale"].dtype == torch.float32
    assert len(open_dataset("ct", "test", 16, None, seed=0)) == 32  # preset default size


# -- CelebA ---------------------------------------------------------------------------------------


def _celeba(root: Path, n: int = 12, partition: bool = True) -> Path:
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        make_jpg(folder / f"{i:06d}.jpg", size=(218, 178), channels=3, seed=i)
    if partition:
        codes = [0] * (n - 4) + [1, 1, 2, 2]
        lines = [f"{i:06d}.jpg {c}" for i, c in zip(range(1, n + 1), codes, strict=True)]
        (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def test_celeba_with_partition_file(tmp_path: Path) -> None:
    root = _celeba(tmp_path / "celeba")
    assert detect_kind(root) == "celeba"
    sizes = {s: len(open_dataset("deblur", s, 32, root, seed=0)) for s in SPLITS}
    assert sizes == {"train": 8, "val": 2, "test": 2}
    ds = CelebADataset(root, "test", 32)
    assert ds.names == ["000011.jpg", "000012.jpg"]
    _check_item(ds[0], 3, 32)
    # root may also be the image folder itself; the partition file is found next to it
    inner = CelebADataset(root / "img_align_celeba", "val", 32)
    assert inner.names == ["000009.jpg", "000010.jpg"]
    # or a flat folder of JPEGs with the partition file beside them
    flat = root / "img_align_celeba"
    (root / "list_eval_partition.txt").rename(flat / "list_eval_partition.txt")
    flat = flat.rename(tmp_path / "faces")
    assert detect_kind(flat) == "celeba"
    assert len(open_dataset("deblur", "train", 32, flat, seed=0)) == 8


def test_celeba_without_partition_file(tmp_path: Path) -> None:
    root = _celeba(tmp_path / "celeba", n=20, partition=False)
    parts = {s: set(CelebADataset(root, s, 24).names) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == 20
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"])
    assert len(parts["val"]) == 2 and len(parts["test"]) == 2
    image, _ = CelebADataset(root, "train", 128)[0]
    assert image.shape == (3, 128, 128)


def test_celeba_refused_for_other_tasks(tmp_path: Path) -> None:
    root = _celeba(tmp_path / "celeba", n=3, partition=False)
    msg = "holds CelebA face photos, which fits task deblur, not ct"
    with pytest.raises(InputError, match=msg):
        open_dataset("ct", "train", 32, root, seed=0)


# -- LoDoPaB-CT -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lodopab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lodopab")
    make_lodopab_pair(root, "train", 1, n=2, seed=1)
    make_lodopab_pair(root, "train", 0, n=3, seed=0)
    make_lodopab_pair(root, "validation", 0, n=1, seed=2)
    make_lodopab_pair(root, "test", 0, n=2, seed=3)
    return root


def test_lodopab_ct_folder(lodopab_dir: Path) -> None:
    import h5py

    assert detect_kind(lodopab_dir) == "lodopab"
    sizes = {s: len(open_dataset("ct", s, 362, lodopab_dir, seed=0)) for s in SPLITS}
    assert sizes == {"train": 5, "val": 1, "test": 2}
    ds = LoDoPaBDataset(lodopab_dir, "train", 362)
    assert ds.names == ["ground_truth_train_000.hdf5", "ground_truth_train_001.hdf5"]
    with h5py.File(lodopab_dir / "ground_truth_train_001.hdf5") as f:
        expected = f["data"][1]
    image, meta = ds[4]  # file 001, sample 1
    _check_item((image, meta), 1, 362)
    np.testing.assert_array_equal(image[0].numpy(), expected)
    assert ds.item_name(4) == "ground_truth_train_001.hdf5[1]"
    small = open_dataset("ct", "test", 64, lodopab_dir, seed=0)
    _check_item(small[1], 1, 64)


def test_lodopab_ct_wrong_task_and_empty_split(lodopab_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds LoDoPaB-CT data, which fits task ct, not mri4x"):
        open_dataset("mri4x", "train", 64, lodopab_dir, seed=0)
    only_test = tmp_path / "lodopab_test"
    only_test.mkdir()
    make_lodopab_pair(only_test, "test", 0, n=1)
    with pytest.raises(InputError, match=r"no LoDoPaB ground_truth_train_\*\.hdf5"):
        open_dataset("ct", "train", 64, only_test, seed=0)


# -- fastMRI --------------------------------------------------------------------------------------


def test_fastmri_layout_folder(tmp_path: Path) -> None:
    root = tmp_path / "knee"
    (root / "singlecoil_train").mkdir(parents=True)
    (root / "singlecoil_val").mkdir()
    truth = {}
    for i in range(2):
        name = f"file{1000 + i}.h5"
        truth[name] = make_fastmri_file(root / "singlecoil_train" / name, n_slices=3, seed=i)
    for i in range(4):
        make_fastmri_file(root / "singlecoil_val" / f"file{2000 + i}.h5", n_slices=2, seed=10 + i)
    assert detect_kind(root) == "fastmri"
    train = open_dataset("mri4x", "train", 48, root, seed=0)
    assert len(train) == 6
    assert train.names == ["singlecoil_train/file1000.h5", "singlecoil_train/file1001.h5"]
    val = FastMRIDataset(root, "val", 48)
    test = FastMRIDataset(root, "test", 48)
    assert len(val.names) == len(test.names) == 2 and not set(val.names) & set(test.names)
    image, meta = train[4]  # file1001.h5, slice 1
    _check_item((image, meta), 2, 48)
    target = truth["file1001.h5"]["target"]
    assert float(meta["scale"]) == pytest.approx(float(target.max()))
    np.testing.assert_allclose(image[0].numpy(), target[1, 8:56] / target.max(), atol=1e-6)
    assert meta["mask_seed"] == mask_seed("file1001.h5", 1)
    trimmed = FastMRIDataset(root, "train", 48, skip_edge_slices=1)
    assert [trimmed.item_key(i) for i in range(len(trimmed))] == [
        ("singlecoil_train/file1000.h5", 1),
        ("singlecoil_train/file1001.h5", 1),
    ]


def test_fastmri_single_file_and_missing_target(tmp_path: Path) -> None:
    root = tmp_path / "one"
    root.mkdir()
    make_fastmri_file(root / "file1.h5", n_slices=10, seed=0)
    # fewer than 3 volumes: split per slice, so every split has items
    parts = [set(FastMRIDataset(root, s, 32).items) for s in SPLITS]
    assert [len(p) for p in parts] == [8, 1, 1]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # one validation volume in the fastMRI layout: halved per slice into val and test
    lone = tmp_path / "lone" / "singlecoil_val"
    lone.mkdir(parents=True)
    make_fastmri_file(lone / "file7.h5", n_slices=6, seed=7)
    halves = [set(FastMRIDataset(lone.parent, s, 32).items) for s in ("val", "test")]
    assert len(halves[0]) == len(halves[1]) == 3 and not halves[0] & halves[1]
    with pytest.raises(InputError, match="no singlecoil_train/"):
        open_dataset("mri4x", "train", 32, lone.parent, seed=0)
    # fully sampled k-space without reconstruction_esc: target computed from k-space, max too
    made = make_fastmri_file(tmp_path / "k.h5", n_slices=3, seed=4)
    bare = tmp_path / "bare"
    bare.mkdir()
    write_h5(bare / "file9.h5", {"kspace": made["kspace"]})
    ds = FastMRIDataset(bare, "all", 48)
    image, meta = ds[2]
    target = made["target"]  # (3, 64, 48): the centre 48 x 48 square is the item
    assert float(meta["scale"]) == pytest.approx(float(target.max()), rel=1e-5)
    np.testing.assert_allclose(image[0].numpy(), target[2, 8:56] / target.max(), atol=1e-5)
    # test-style files (undersampled, no target) cannot be ground truth
    masked = tmp_path / "masked"
    masked.mkdir()
    make_fastmri_file(masked / "file5.h5", with_mask=True)
    with pytest.raises(InputError, match="no reconstruction_esc"):
        open_dataset("mri8x", "all", 32, masked, seed=0)
    with pytest.raises(InputError, match="fits tasks mri4x and mri8x, not deblur"):
        open_dataset("deblur", "train", 32, root, seed=0)


# -- folders of images / NIfTI --------------------------------------------------------------------


def test_png_folder_for_every_task(tmp_path: Path) -> None:
    root = tmp_path / "pngs"
    root.mkdir()
    for i in range(10):
        make_png(root / f"gray{i}.png", size=(40, 50), channels=1, seed=i)
    make_png(root / "rgb.png", size=(30, 30), channels=3, seed=99)
    (root / "notes.txt").write_text("not an image")
    assert detect_kind(root) == "folder"
    names = {s: set(FolderDataset(root, "ct", s, 24).names) for s in SPLITS}
    assert sum(len(v) for v in names.values()) == 11
    assert not (names["train"] & names["val"] or names["train"] & names["test"])
    for task in ("deblur", "ct", "mri4x"):
        ds = open_dataset(task, "all", 24, root, seed=0)
        assert len(ds) == 11
        for i in range(len(ds)):
            _check_item(ds[i], TASK_CHANNELS[task], 24)
    limited = open_dataset("ct", "all", 24, root, seed=0, size=4)
    assert len(limited) == 4 and [limited[i][1]["index"] for i in range(4)] == [0, 2, 5, 8]


def test_nifti_volume_slices(tmp_path: Path) -> None:
    root = tmp_path / "vols"
    root.mkdir()
    slices, _ = make_nifti_volume(root / "scan.nii.gz", shape=(32, 28, 12), seed=1)
    assert detect_kind(root) == "folder"
    parts = {s: FolderDataset(root, "mri4x", s, 28) for s in SPLITS}
    keys = [set(parts[s].item_key(i) for i in range(len(parts[s]))) for s in SPLITS]
    assert [len(k) for k in keys] == [10, 1, 1] and not (keys[0] & keys[1] | keys[0] & keys[2])
    ds = open_dataset("ct", "all", 28, root / "scan.nii.gz", seed=0)  # a single file works too
    image, meta = ds[5]
    _check_item((image, meta), 1, 28)
    crop = slices[5][2:30, :]  # centre square of the (32, 28) slice; already in [0, 1]
    np.testing.assert_allclose(image[0].numpy(), crop, atol=1e-6)
    assert ds.item_name(5) == "scan.nii.gz[5]"
    item = parts["train"][0]
    name, s = parts["train"].item_key(0)
    assert item[1]["mask_seed"] == mask_seed(name, s)


def test_unit_range_rules() -> None:
    x = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    assert unit_range(x)[1:] == (1.0, 0.0)
    y, scale, offset = unit_range(np.array([0.0, 2.0, 4.0], dtype=np.float32))
    assert (scale, offset) == (4.0, 0.0) and y.max() == 1.0
    z, scale, offset = unit_range(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32))
    assert (scale, offset) == (2000.0, -1000.0) and z.min() == 0.0 and z.max() == 1.0


# -- errors ---------------------------------------------------------------------------------------


def test_data_path_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data path not found"):
        open_dataset("deblur", "train", 32, tmp_path / "nope", seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="folder is empty"):
        open_dataset("deblur", "train", 32, empty, seed=0)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="holds no images"):
        open_dataset("deblur", "train", 32, junk, seed=0)
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        make_png(two / f"{i}.png", seed=i)
    with pytest.raises(InputError, match="the val split of this folder holds no images"):
        open_dataset("deblur", "val", 32, two, seed=0)
    other_h5 = tmp_path / "h5"
    other_h5.mkdir()
    write_h5(other_h5 / "x.h5", {"images": np.zeros((2, 4, 4))})
    with pytest.raises(InputError, match="neither fastMRI"):
        open_dataset("mri4x", "train", 32, other_h5, seed=0)
    with pytest.raises(ConfigError, match="unknown split"):
        open_dataset("deblur", "all", 32, None, seed=0)
    for err in (InputError, ConfigError):
        assert issubclass(err, Exception)
