"""Real file-system and memory limits, not mocks (issue 16).

Each command runs as a real process (``python -m luser_cli``) under a resource limit:

- ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored (Python ignores it at startup): every write past the
  limit fails with ``EFBIG``, as a full disk fails with ``ENOSPC``. The limit is set below the
  size of the output the same command writes without it, so the write must fail; the command
  must then print one ``error:`` line, exit 2, remove its temporary file and leave the previous
  output (or the previous checkpoints) byte for byte as they were.
- ``RLIMIT_AS`` (address space) well below what an absurd input would allocate: the command
  must refuse the input from its header in one line, never reach ``MemoryError``. Without the
  size check each test names, the command would allocate gigabytes and fail differently.

No root is needed; POSIX only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from fixtures.cli import assert_clean_error, run_cli
from fixtures.files import make_nifti_volume, make_png
from fixtures.tiny import TINY, TRAIN

resource = pytest.importorskip("resource")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")

#: Address space granted to a size-bomb command beyond what its imports reserve (about 0.7 GB
#: for python + torch + h5py + nibabel on a CPU build): a small command fits, every bomb would
#: need 4 GB or more.
AS_HEADROOM = 2 * 1024**3


def run_limited(
    args: list, *, fsize: int | None = None, address_space: int | None = None
) -> subprocess.CompletedProcess:
    """``luser *args`` in a child process under the given limits (bytes)."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("LUSER_FAULT_INJECT", None)
    return subprocess.run(
        [sys.executable, "-m", "luser_cli", *map(str, args)],
        preexec_fn=limit,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


@pytest.fixture(scope="module")
def as_limit() -> int:
    """``RLIMIT_AS`` for the size-bomb commands: their imports' peak address space plus
    :data:`AS_HEADROOM` (a CUDA build of torch maps far more than a CPU build)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to measure the address space")
    code = (
        "import torch, h5py, nibabel, PIL.Image\n"
        "import luser_cli.simulate, luser_cli.reconstruct, luser_cli.cli.commands\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) * 1024 + AS_HEADROOM


@pytest.fixture(scope="module")
def ct_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scan")
    make_png(d / "x.png", (48, 48))
    code, _, err = run_cli(["simulate", d / "x.png", "-t", "ct", "-o", d / "scan.h5"])
    assert code == 0, err
    return d / "scan.h5"


# -- disk full: every writer ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".nii.gz", ".png"])
def test_full_disk_reconstruct_keeps_the_previous_output(
    ct_scan: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"rec{suffix}"
    args = ["reconstruct", ct_scan, "-o", out, "-m", "fbp", "--no-progress"]
    code, _, err = run_cli(args)  # the previous output, written without a limit
    assert code == 0, err
    before = out.read_bytes()
    assert len(before) > 200
    second = run_limited(args, fsize=len(before) // 2)
    assert_clean_error(second.returncode, second.stderr, expect="cannot write")
    assert second.returncode == 2
    assert "file too large" in second.stderr
    assert out.read_bytes() == before, "the previous output changed"
    assert temporaries(tmp_path) == [], "a temporary file was left"


def test_full_disk_simulate_keeps_the_previous_output(tmp_path: Path) -> None:
    make_png(tmp_path / "x.png", (48, 48))
    out = tmp_path / "scan.h5"
    args = ["simulate", tmp_path / "x.png", "-t", "ct", "-o", out]
    code, _, err = run_cli(args)
    assert code == 0, err
    before = out.read_bytes()
    second = run_limited([*args, "--seed", "3"], fsize=len(before) // 2)
    assert_clean_error(second.returncode, second.stderr, expect="cannot write")
    assert "Segmentation" not in second.stderr and second.returncode == 2
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.h5", "x.png"]


@pytest.mark.slow
def test_full_disk_during_training_keeps_the_last_good_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY, encoding="utf-8")
    run = tmp_path / "run"
    code, _, err = run_cli([*TRAIN, "--preset", tmp_path / "tiny.toml", "--out", run])
    assert code == 0, err
    checkpoints = {n: (run / n).read_bytes() for n in ("checkpoint_last.pt", "checkpoint_prev.pt")}
    size = len(checkpoints["checkpoint_last.pt"])
    # Extend the run: the step-3 checkpoint cannot be written.
    second = run_limited([*TRAIN, "--out", run, "--resume", "--steps", "4"], fsize=size // 2)
    lines = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode == 2, second.stderr
    assert len(lines) == 1 and "cannot write" in lines[0], second.stderr
    assert "Traceback" not in second.stderr
    for name, data in checkpoints.items():
        assert (run / name).read_bytes() == data, f"{name} changed"
    assert temporaries(run) == []
    # and the run resumes from them once there is room again
    code, _, err = run_cli([*TRAIN, "--out", run, "--resume", "--steps", "4"])
    assert code == 0, err
    assert "resumed" in err and "at step 2" in err


def test_outputs_with_long_names_get_short_temporary_names(ct_scan: Path, tmp_path: Path) -> None:
    """A 252-character output name: its temporary name must still fit in 255 bytes."""
    for suffix in (".npy", ".nii.gz", ".h5"):
        out = tmp_path / ("r" * (252 - len(suffix)) + suffix)
        assert len(out.name) == 252
        code, _, err = run_cli(["reconstruct", ct_scan, "-o", out, "-m", "fbp", "--no-progress"])
        assert code == 0, err
        assert out.is_file()
    assert temporaries(tmp_path) == []


# -- size bombs refused from headers, under a low address-space limit ----------------------------


def lying_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A small ``.nii`` whose header claims ``shape`` float32 voxels (4 GB for 1000^3)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * 4096)
    return path


def inflating_nifti(path: Path) -> Path:
    """A ``.nii.gz`` whose header declares 64 x 64 x 4 float32 (64 KB) but whose gzip stream
    inflates to 64 MB more (a few hundred KB on disk)."""
    import gzip

    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((64, 64, 4), np.float32), np.eye(4))
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(img.to_bytes())
        for _ in range(64):
            f.write(b"\0" * (1 << 20))
    return path


def rgb24_nifti(path: Path) -> Path:
    import nibabel as nib

    rgb = np.zeros((16, 16, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))
    return path


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming ``width x height`` with a tiny data stream."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def huge_h5(path: Path, key: str, shape: tuple[int, ...], dtype: str, attrs: dict | None = None):
    """An HDF5 file with a dataset declared ``shape`` but no chunk written (a few KB)."""
    with h5py.File(path, "w") as f:
        f.create_dataset(key, shape=shape, dtype=dtype, chunks=(1, *shape[1:2], 16)[: len(shape)])
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def huge_measurement(src: Path, path: Path) -> Path:
    """A copy of a valid CT measurement file whose measurements claim 10^9 float32 values."""
    shutil.copyfile(src, path)
    with h5py.File(path, "r+") as f:
        del f["measurements"]
        f.create_dataset("measurements", shape=(4000, 500, 500), dtype="f4", chunks=(1, 50, 50))
    return path


SIZE_BOMBS = {
    # name: (make(tmp, ct_scan) -> command args, expected words)
    "nifti header 1000^3": (
        lambda d, _s: ["simulate", lying_nifti(d / "big.nii", (1000, 1000, 1000)), "-t", "ct",
                       "-o", d / "o.h5"],
        "too large",
    ),
    "nifti.gz inflating past its header": (
        lambda d, _s: ["simulate", inflating_nifti(d / "bomb.nii.gz"), "-t", "ct",
                       "-o", d / "o.h5"],
        "decompresses to more than its header declares",
    ),
    "RGB24 nifti": (
        lambda d, _s: ["simulate", rgb24_nifti(d / "rgb.nii"), "-t", "ct", "-o", d / "o.h5"],
        "RGB24",
    ),
    "12000x12000 png": (
        lambda d, _s: ["simulate", huge_png(d / "big.png", 12000, 12000), "-t", "ct",
                       "-o", d / "o.h5"],
        "megapixels",
    ),
    "measurement file 4000x500x500": (
        lambda d, s: ["reconstruct", huge_measurement(s, d / "m.h5"), "-o", d / "o.npy",
                      "-m", "fbp"],
        "too large",
    ),
    "fastMRI kspace 2000x640x1000": (
        lambda d, _s: ["reconstruct", huge_h5(d / "file1.h5", "kspace", (2000, 640, 1000), "c8"),
                       "-o", d / "o.npy", "-m", "zero-filled", "--task", "mri4x"],
        "too large",
    ),
    "LoDoPaB observations 10000x1000x513": (
        lambda d, _s: ["reconstruct",
                       huge_h5(d / "observation_test_000.hdf5", "data", (10000, 1000, 513), "f4"),
                       "-o", d / "o.npy", "-m", "fbp"],
        "too large",
    ),
    "simulate --image-size 16384": (
        lambda d, _s: ["simulate", huge_png(d / "s.png", 32, 32), "-t", "ct", "-o", d / "o.h5",
                       "--image-size", "16384"],
        "--image-size must be between 4 and 4096",
    ),
    "physics angles_total=10^12": (
        lambda d, _s: ["simulate", huge_png(d / "s.png", 32, 32), "-t", "ct", "-o", d / "o.h5",
                       "--physics", "angles_total=1000000000000"],
        "physics.angles_total",
    ),
}  # fmt: skip


#: Runs each command of a JSON table in one process (the CLI's own ``main``), as a user would
#: run them one by one; one process start instead of one per case.
DRIVER = """
import contextlib, io, json, sys
from luser_cli.cli.app import main
results = {}
for name, args in json.load(open(sys.argv[1])).items():
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # MemoryError included: reported, not fatal to the others
            code, _ = -1, err.write(f"{type(e).__name__}: {e}")
    results[name] = [code, err.getvalue()]
json.dump(results, open(sys.argv[2], "w"))
"""


#: Normal work run in the same limited process after the bombs (each in its own folder; the
#: reconstruct reads the scan the simulate wrote).
CONTROLS = {
    "control: simulate": lambda d, _s: [
        "simulate", make_nifti_volume(d / "v.nii.gz", (32, 32, 3)) and d / "v.nii.gz",
        "-t", "ct", "-o", d.parent / "control.h5",
    ],
    "control: reconstruct": lambda d, _s: [
        "reconstruct", d.parent / "control.h5", "-o", d / "r.npy", "-m", "fbp",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def bomb_results(
    ct_scan: Path, tmp_path_factory: pytest.TempPathFactory, as_limit: int
) -> dict[str, tuple[int, str, dict[str, bytes], dict[str, bytes]]]:
    """Every size bomb run under ``RLIMIT_AS``: name -> (exit code, stderr, files before,
    files after) of its own work folder."""
    root = tmp_path_factory.mktemp("bombs")
    table, before = {}, {}
    makers = {name: make for name, (make, _expect) in SIZE_BOMBS.items()} | CONTROLS
    for name, make in makers.items():
        work = root / f"case{len(table)}"
        work.mkdir()
        table[name] = [str(a) for a in make(work, ct_scan)]
        before[name] = (work, snapshot(work))
    (root / "table.json").write_text(json.dumps(table), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))

    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root / "table.json"), str(root / "out.json")],
        preexec_fn=limit, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((root / "out.json").read_text(encoding="utf-8"))
    return {
        name: (code, err, before[name][1], snapshot(before[name][0]))
        for name, (code, err) in results.items()
    }


@pytest.mark.parametrize("case", list(SIZE_BOMBS))
def test_size_bombs_are_refused_before_allocating(case: str, bomb_results: dict) -> None:
    code, err, before, after = bomb_results[case]
    assert "MemoryError" not in err, err
    assert_clean_error(code, err, expect=SIZE_BOMBS[case][1])
    assert code == 2
    assert after == before, "a file was written or changed"


def test_the_address_space_limit_leaves_room_for_normal_work(bomb_results: dict) -> None:
    """The control for the tests above, run in the same limited process: a small NIfTI volume
    is simulated and reconstructed."""
    for name in CONTROLS:
        code, err, _before, _after = bomb_results[name]
        assert code == 0, f"{name}: {err}"
    assert "r.npy" in bomb_results["control: reconstruct"][3]
