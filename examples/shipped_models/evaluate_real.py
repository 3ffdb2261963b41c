"""Shipped models against TV and each task's simple baseline on real images, with luser's CLI.

Every number comes from the commands a user runs: ``luser simulate IMAGE --task T -o scan.h5``,
then ``luser reconstruct scan.h5 -o out.npy --method M`` for M in (model, tv, baseline), and
PSNR / SSIM against the ground truth stored in the scan (the task's convention,
:mod:`luser_cli.evaluation.metrics`). Two more inputs are built in the formats users bring:
a fastMRI single-coil file (320 x 320, fully sampled, smooth phase; ``--task mri4x|mri8x``
undersamples it) and a LoDoPaB-CT observation file (362 x 362, 1000 angles x 513 bins, post-log
Poisson noise at N0 = 4096, made with luser's own Radon transform).

Image sets (``--set``):

- ``reserved``: images never used for training, tuning or checkpoint choice, kept for this
  table only: pydicom's ``CT_small.dcm`` (CT, HU -> LoDoPaB units), nilearn's MNI152 T1 template
  (3 axial slices) and matplotlib's ``s1045.ima.gz`` MRI slice (MRI), matplotlib's
  ``grace_hopper.jpg`` and scikit-image's test photographs ``chelsea`` / ``coffee`` (deblurring;
  the built-in data's test split, never trained on).
- ``check``: the images used while developing (choosing sizes and recipes): scikit-image's
  ``camera`` (CT in LoDoPaB units, deblurring), pydicom's ``MR_small.dcm`` and nibabel's
  ``anatomical.nii`` slices (MRI; ``example4d.nii.gz`` is training data of ``--builtin scans``).

Usage::

    python examples/shipped_models/evaluate_real.py --set reserved \
        --json examples/shipped_models/real-images.json
    python examples/shipped_models/evaluate_real.py --set check --model ct=runs/ct-... --tasks ct

Needs ``pip install nilearn`` for the reserved MRI template (nothing is downloaded: the template
ships inside the package).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from luser_cli.bench.machine import machine_info
from luser_cli.evaluation.metrics import psnr, ssim

MU_WATER, MU_MAX = 20.0, 81.35858  # 1/m: LoDoPaB's HU conversion and normalisation
SIZE = 128
BASELINE = {"ct": "fbp", "mri4x": "zero-filled", "mri8x": "zero-filled", "deblur": "input"}
TASKS = ("ct", "mri4x", "mri8x", "deblur")


# -- images -------------------------------------------------------------------------------------
def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop the last two axes to a square and resize to ``size`` (anti-aliased)."""
    from skimage.transform import resize

    h, w = image.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[..., top : top + s, left : left + s]
    shape = (*crop.shape[:-2], size, size)
    return resize(crop, shape, order=1, anti_aliasing=s > size, preserve_range=True)


def _unit(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float64)
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / max(hi - lo, 1e-12)


def ct_from_hu(hu: np.ndarray) -> np.ndarray:
    """HU -> LoDoPaB units ``mu / mu_max`` clipped to [0, 1] (``mu = mu_water (1 + HU/1000)``)."""
    return np.clip(MU_WATER * (1.0 + hu / 1000.0) / MU_MAX, 0.0, 1.0)


def ct_small() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return ct_from_hu(hu)


def mr_dicom(name: str) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    return _unit(pydicom.dcmread(get_testdata_file(name)).pixel_array)


def nibabel_slices(name: str, slices: list[int]) -> list[np.ndarray]:
    import nibabel as nib

    path = Path(nib.__file__).parent / "tests" / "data" / name
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float64)
    if data.ndim == 4:
        data = data[..., 0]
    return [_unit(np.rot90(data[:, :, k])) for k in slices]


def mni_slices(slices: list[int]) -> list[np.ndarray]:
    import nibabel as nib
    import nilearn

    path = (
        Path(nilearn.__file__).parent
        / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float64)
    return [_unit(np.rot90(data[:, :, k])) for k in slices]


def mpl_mri() -> np.ndarray:
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data/sample_data/s1045.ima.gz"
    with gzip.open(path) as f:
        raw = np.frombuffer(f.read(), np.uint16).astype(np.float64)
    return _unit(raw.reshape(256, 256))


def rgb_file(path: Path) -> np.ndarray:
    from skimage.io import imread

    rgb = imread(path)[..., :3].astype(np.float64) / 255.0
    return np.moveaxis(rgb, -1, 0)


def skimage_rgb(name: str) -> np.ndarray:
    import skimage.data

    return np.moveaxis(getattr(skimage.data, name)()[..., :3].astype(np.float64) / 255.0, -1, 0)


def images(task: str, which: str) -> dict[str, np.ndarray]:
    """Ground truths ``(H, W)`` (CT, MRI magnitude in [0, 1]) or ``(3, H, W)`` (deblur)."""
    import matplotlib
    import skimage.data

    if task == "ct":
        if which == "reserved":
            return {"CT_small.dcm": ct_small()}
        camera = skimage.data.camera().astype(np.float64) / 255.0
        return {"camera (x0.5)": 0.5 * camera}
    if task in ("mri4x", "mri8x"):
        if which == "reserved":
            out = {
                f"MNI152 T1 z={k}": s
                for k, s in zip((70, 90, 110), mni_slices([70, 90, 110]), strict=True)
            }
            out["s1045.ima"] = mpl_mri()
            return out
        out = {"MR_small.dcm": mr_dicom("MR_small.dcm")}
        for k, s in zip((10, 14), nibabel_slices("anatomical.nii", [10, 14]), strict=True):
            out[f"anatomical z={k}"] = s
        return out
    if which == "reserved":
        sample = Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg"
        return {
            "grace_hopper.jpg": rgb_file(sample),
            "chelsea": skimage_rgb("chelsea"),
            "coffee": skimage_rgb("coffee"),
        }
    camera = skimage.data.camera().astype(np.float64) / 255.0
    return {"camera": np.stack([camera] * 3), "astronaut (train photo)": skimage_rgb("astronaut")}


# -- running luser --------------------------------------------------------------------------------
def luser(*args: str) -> str:
    cmd = [sys.executable, "-m", "luser_cli", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stderr.strip()


def model_args(task: str, models: dict[str, str]) -> list[str]:
    return ["--checkpoint", models[task]] if task in models else []


def score(task: str, gt: np.ndarray, pred: np.ndarray, vmax: float | None) -> tuple[float, float]:
    return psnr(task, gt, pred, vmax), ssim(task, gt, pred, vmax)


def run_scan(task: str, name: str, image: np.ndarray, work: Path, models: dict[str, str]) -> dict:
    """Simulate one image at ``SIZE`` px and reconstruct it with the model, TV and baseline."""
    src = work / f"{task}-{len(list(work.iterdir()))}.npy"
    img = _square(image, SIZE).astype(np.float32)
    np.save(src, img if img.ndim == 2 else np.moveaxis(img, 0, -1))
    scan = src.with_suffix(".h5")
    luser("simulate", src, "--task", task, "-o", scan, "--seed", "0")
    with h5py.File(scan) as f:
        gt = f["ground_truth"][0]
    if task in ("mri4x", "mri8x"):
        gt = np.linalg.norm(gt, axis=0, keepdims=True)
    vmax = float(gt.max()) if task.startswith("mri") else None
    row: dict = {"image": name, "size": SIZE}
    for method in ("model", "tv", BASELINE[task]):
        out = scan.with_name(f"{scan.stem}-{method}.npy")
        extra = model_args(task, models) if method == "model" else []
        t0 = time.perf_counter()
        note = luser("reconstruct", scan, "-o", out, "--method", method, "--no-progress", *extra)
        seconds = time.perf_counter() - t0
        pred = np.load(out)[0]
        pred = pred[None] if pred.ndim == 2 else pred
        p, s = score(task, gt, pred, vmax)
        row[method] = {"psnr": p, "ssim": s, "seconds": seconds}
        if method == "model":
            row["model_note"] = note
    return row


def fastmri_row(
    task: str, name: str, image: np.ndarray, work: Path, models: dict[str, str]
) -> dict:
    """A fully sampled fastMRI-style file (320 x 320, smooth phase) undersampled by ``task``."""
    size = 320
    mag = _square(image, size)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    img = 1e-4 * mag * np.exp(1j * (0.8 * xx - 0.5 * yy + 0.3))
    ax = (-2, -1)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=ax), norm="ortho"), axes=ax)
    target = np.abs(img).astype(np.float32)
    path = work / f"fastmri-{task}-{len(list(work.iterdir()))}.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace[None].astype(np.complex64))
        f.create_dataset("reconstruction_esc", data=target[None])
        f.attrs["max"] = float(target.max())
        f.attrs["norm"] = float(np.linalg.norm(target))
        f.attrs["acquisition"] = "CORPD_FBK"
    row: dict = {"image": f"{name} (fastMRI file)", "size": size}
    for method in ("model", "tv", "zero-filled"):
        out = path.with_name(f"{path.stem}-{method}.npy")
        extra = model_args(task, models) if method == "model" else []
        t0 = time.perf_counter()
        note = luser(
            "reconstruct",
            path,
            "-o",
            out,
            "--method",
            method,
            "--task",
            task,
            "--no-progress",
            *extra,
        )
        pred = np.load(out)[0]
        p, s = score(task, target[None], pred[None], float(target.max()))
        row[method] = {"psnr": p, "ssim": s, "seconds": time.perf_counter() - t0}
        if method == "model":
            row["model_note"] = note
    return row


def lodopab_row(name: str, image: np.ndarray, work: Path, models: dict[str, str]) -> dict:
    """A LoDoPaB observation file (362 px, 1000 angles x 513 bins, N0 = 4096) of ``image``."""
    import torch

    from luser_cli.operators.radon import CTGeometry, ParallelBeamRadon

    gt = _square(image, 362).astype(np.float32)
    op = ParallelBeamRadon(CTGeometry.lodopab(362, angles_total=1000, angle_step=1))
    with torch.no_grad():
        sino = op.A(torch.from_numpy(gt)[None, None]).double().numpy()[0]
    rng = np.random.default_rng(0)
    counts = rng.poisson(4096.0 * np.exp(-MU_MAX * sino)).astype(np.float64)
    counts = np.where(counts == 0, 0.1, counts)
    obs = (-np.log(counts / 4096.0) / MU_MAX).astype(np.float32).reshape(1, 1000, 513)
    obs_path = work / "observation_test_000.hdf5"
    with h5py.File(obs_path, "w") as f:
        f.create_dataset("data", data=obs)
    row: dict = {"image": f"{name} (LoDoPaB file)", "size": 362}
    for method in ("model", "tv", "fbp"):
        out = work / f"lodopab-{method}.npy"
        extra = model_args("ct", models) if method == "model" else []
        t0 = time.perf_counter()
        note = luser(
            "reconstruct", obs_path, "-o", out, "--method", method, "--no-progress", *extra
        )
        pred = np.load(out)[0]
        p, s = score("ct", gt[None], pred[None], None)
        row[method] = {"psnr": p, "ssim": s, "seconds": time.perf_counter() - t0}
        if method == "model":
            row["model_note"] = note
    return row


def evaluate(tasks: list[str], which: str, models: dict[str, str], large: bool) -> dict:
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            work = Path(tmp) / task
            work.mkdir()
            pics = images(task, which)
            rows[task] = [run_scan(task, n, im, work, models) for n, im in pics.items()]
            if large and task in ("mri4x", "mri8x"):
                first = next(iter(pics.items()))
                rows[task].append(fastmri_row(task, *first, work, models))
            if large and task == "ct":
                first = next(iter(pics.items()))
                rows[task].append(lodopab_row(*first, work, models))
            for r in rows[task]:
                b = (
                    BASELINE[task]
                    if BASELINE[task] in r
                    else ("zero-filled" if "zero-filled" in r else "fbp")
                )
                print(
                    f"{task:7s} {r['image']:28s} {r['size']:4d}px  "
                    f"model {r['model']['psnr']:6.2f}  "
                    f"tv {r['tv']['psnr']:6.2f}  {b} {r[b]['psnr']:6.2f}",
                    flush=True,
                )
    return rows


def summary(rows: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for task, rs in rows.items():
        small = [r for r in rs if r["size"] == SIZE]
        mean = {m: float(np.mean([r[m]["psnr"] for r in small])) for m in ("model", "tv")}
        out[task] = {
            "n_images_128": len(small),
            "model_psnr_mean": mean["model"],
            "tv_psnr_mean": mean["tv"],
            "baseline": BASELINE[task],
            "baseline_psnr_mean": float(np.mean([r[BASELINE[task]]["psnr"] for r in small])),
            "model_minus_tv_db": mean["model"] - mean["tv"],
        }
    return out


def markdown(results: list[dict]) -> str:
    """A Markdown table of every row of one or more ``evaluate`` results (PSNR / SSIM)."""
    lines = [
        "| task | image | px | model (LUSER-DW) | TV | simple baseline | model - TV |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for res in results:
        for task, rows in res["rows"].items():
            for r in rows:
                base = next(m for m in ("fbp", "zero-filled", "input") if m in r)
                cells = {
                    m: f"{r[m]['psnr']:.2f} / {r[m]['ssim']:.3f}" for m in ("model", "tv", base)
                }
                lines.append(
                    f"| {task} | {r['image']} | {r['size']} | {cells['model']} | {cells['tv']} | "
                    f"{base} {cells[base]} | {r['model']['psnr'] - r['tv']['psnr']:+.2f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--set", choices=("reserved", "check"), default="reserved")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument(
        "--model", action="append", default=[], help="TASK=RUN_OR_FILE (default: shipped)"
    )
    ap.add_argument("--no-large", action="store_true", help="skip the fastMRI and LoDoPaB files")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    t0 = time.time()
    rows = evaluate(args.tasks.split(","), args.set, models, not args.no_large)
    result = {
        "set": args.set,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_info(),
        "seconds": time.time() - t0,
        "models": models or "shipped",
        "summary": summary(rows),
        "rows": rows,
    }
    for task, s in result["summary"].items():
        print(
            f"{task:7s} mean of {s['n_images_128']} at {SIZE}px: model {s['model_psnr_mean']:.2f}  "
            f"tv {s['tv_psnr_mean']:.2f}  {s['baseline']} {s['baseline_psnr_mean']:.2f}  "
            f"model - tv {s['model_minus_tv_db']:+.2f} dB"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
