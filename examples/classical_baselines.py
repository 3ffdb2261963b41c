"""Classical baselines on real images that ship with installed packages (no download).

Measures, per task, the simple baselines (FBP, zero-filled, the blurred input) against luser's
total-variation reconstruction with its default weights, and checks the bars of issue 2:

- CT: a real CT slice (pydicom's ``CT_small.dcm``), LoDoPaB physics (200 of 1000 angles, Poisson
  N0 = 4096): our Hann FBP within 1.5 dB of scikit-image's ``iradon`` Hann FBP on the same noisy
  sinogram, and TV at least 1 dB above our FBP. Metrics as LoDoPaB (data range = gt max - min).
- MRI: a real brain EPI slice (nibabel's ``example4d.nii.gz``) at 4x and 8x (fastMRI-style
  column masks, fixed seed): TV at least 0.5 dB above zero-filled (4x). Metrics as fastMRI
  (magnitude, data range = target max, 7x7 SSIM). Also pydicom's ``MR_small.dcm``.
- Deblurring: real photographs (scikit-image's astronaut, coffee, chelsea), 9x9 Gaussian of
  variance 5 + AWGN 0.01: TV at least 1 dB above the blurred input (data range 1).

The default TV weights were tuned with ``--tune`` on other images (listed in the output).

Run from the repository root:

    python examples/classical_baselines.py          # a few minutes on 2 CPU cores
    python examples/classical_baselines.py --tune   # the weight sweep on the tuning images

Writes ``examples/classical-baselines.md`` and ``examples/classical-baselines.json`` (the JSON
keeps the last ``--tune`` sweep, which the Markdown then shows too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import iradon, resize

from luser_cli.classical import TV_DEFAULTS, reconstruct_classical
from luser_cli.operators.radon import ParallelBeamRadon
from luser_cli.physics import build_noise, build_operator, mri_masks, simulate
from luser_cli.tasks import get_task

HERE = Path(__file__).resolve().parent
MU_WATER = 20.0  # 1/m, LoDoPaB's value for converting HU
MU_MAX = 81.35858  # 1/m, LoDoPaB's normalisation: x = mu / MU_MAX

# -- real images ----------------------------------------------------------------------------------


def _square(image: np.ndarray) -> np.ndarray:
    """Zero-pad the last two axes to a centred square."""
    h, w = image.shape[-2:]
    n = max(h, w)
    out = np.zeros((*image.shape[:-2], n, n), dtype=np.float64)
    top, left = (n - h) // 2, (n - w) // 2
    out[..., top : top + h, left : left + w] = image
    return out


def _crop_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[-2:]
    n = min(h, w)
    top, left = (h - n) // 2, (w - n) // 2
    return image[..., top : top + n, left : left + n]


def _to_size(image: np.ndarray, size: int) -> np.ndarray:
    """Square ``(..., n, n)`` -> ``(..., size, size)``: crop one row/column off when ``size`` is one
    less (keeps the pixels), otherwise anti-aliased resizing."""
    n = image.shape[-1]
    if size == n:
        return image.astype(np.float64)
    if size == n - 1:
        return image[..., :size, :size].astype(np.float64)
    shape = (*image.shape[:-2], size, size)
    return resize(image.astype(np.float64), shape, anti_aliasing=size < n, order=1)


def ct_small(size: int) -> np.ndarray:
    """pydicom's real CT slice in LoDoPaB units: ``mu = mu_water (1 + HU / 1000)``,
    ``x = mu / mu_max`` clipped to [0, 1]. ``(size, size)`` float64."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    x = np.clip(MU_WATER * (1.0 + hu / 1000.0) / MU_MAX, 0.0, 1.0)
    return _to_size(_square(x), size)


def mr_small() -> np.ndarray:
    """pydicom's real 64x64 MR slice scaled to [0, 1] by its maximum."""
    import pydicom
    from pydicom.data import get_testdata_file

    a = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float64)
    return _square(a / a.max())


def _nibabel_file(name: str) -> np.ndarray:
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data" / name
    return np.asanyarray(nibabel.load(path).dataobj).astype(np.float64)


def brain_epi(slice_index: int = 12, volume: int = 0) -> np.ndarray:
    """nibabel's real EPI brain (128x96x24x2): an axial slice, scaled to [0, 1] by its max,
    zero-padded to 128x128."""
    a = _nibabel_file("example4d.nii.gz")[:, :, slice_index, volume]
    return _square(a / a.max())


def anatomical(offset: int = 0, size: int = 96) -> np.ndarray:
    """nibabel's real anatomical MRI (33x41x25), slice ``12 + offset``, [0, 1], ``size``^2."""
    a = np.clip(_nibabel_file("anatomical.nii")[:, :, 12 + offset], 0, None)
    return _to_size(_square(a / a.max()), size)


def photo(name: str, size: int) -> np.ndarray:
    """A scikit-image photograph: centre square crop, resized, ``(3, size, size)`` in [0, 1]."""
    import skimage.data
    from skimage.io import imread

    files = {"motorcycle": "motorcycle_left.png", "immunohistochemistry": "ihc.png"}
    path = Path(skimage.data.__file__).parent / files.get(name, f"{name}.png")
    if not path.exists():
        path = path.with_suffix(".jpg")
    rgb = imread(path)[..., :3].astype(np.float64) / 255.0
    return np.clip(_to_size(_crop_square(np.moveaxis(rgb, -1, 0)), size), 0.0, 1.0)


def ct_phantoms(size: int) -> dict[str, np.ndarray]:
    """CT tuning images in LoDoPaB units: Shepp-Logan, two dival-style ellipse phantoms scaled to
    soft-tissue attenuation (max 0.35), an anatomical MRI slice as an attenuation map (max 0.4)."""
    from skimage.data import shepp_logan_phantom

    from luser_cli.data.builtin_images import CT_PHANTOM_MAX
    from luser_cli.data.phantoms import random_ellipses

    out = {"shepp-logan": resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)}
    for seed in (1, 2):
        out[f"ellipses-{seed}"] = CT_PHANTOM_MAX * random_ellipses(size, seed).astype(np.float64)
    out["anatomical-mri"] = 0.4 * anatomical(0, size)
    return out


# -- metrics (each field's convention, computed by scikit-image) -------------------------------


def metrics(task: str, target: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """PSNR/SSIM: deblur RGB data range 1; CT data range = gt max - min; MRI magnitudes, data
    range = target max, 7x7 window."""
    spec = get_task(task)
    target, pred = target.astype(np.float64), pred.astype(np.float64)
    if spec.channels == 2:
        target, pred = np.linalg.norm(target, axis=0), np.linalg.norm(pred, axis=0)
        rng = float(target.max())
        kw: dict = {"win_size": 7}
    elif spec.channels == 3:
        rng, kw = 1.0, {"channel_axis": 0}
    else:
        target, pred = target[0], pred[0]
        rng, kw = float(target.max() - target.min()), {}
    return {
        "psnr": float(peak_signal_noise_ratio(target, pred, data_range=rng)),
        "ssim": float(structural_similarity(target, pred, data_range=rng, **kw)),
    }


# -- scikit-image's FBP on our sinogram ---------------------------------------------------------


def skimage_fbp(op: ParallelBeamRadon, y: torch.Tensor, filter_name: str = "hann") -> np.ndarray:
    """``iradon`` on our sinogram ``(1, 1, n_angles, n_det)`` (metres), odd image sizes.

    skimage's detector has one-pixel bins with the rotation axis at bin ``M // 2``, its angle is
    ours minus 90 degrees, and its sinogram is in pixel units (``CTGeometry.like_skimage``). Our
    projections are linearly interpolated onto skimage's bins (zero beyond our detector) and
    divided by the pixel size. For odd ``N`` both rotate about the centre pixel.
    """
    g = op.geometry
    if g.image_size % 2 == 0:
        raise ValueError(
            "skimage_fbp needs an odd image size (skimage rotates even images about a pixel)"
        )
    h = g.pixel_size
    half = math.ceil(g.detector_extent / (2 * h)) + 1
    t = np.arange(-half, half + 1) * h  # skimage bins, metres (M = 2 half + 1, axis at M // 2)
    s = g.detector_positions.numpy()
    proj = y[0, 0].double().cpu().numpy()  # (n_angles, n_det)
    sino = np.stack([np.interp(t, s, p, left=0.0, right=0.0) for p in proj], axis=1) / h
    theta = np.degrees(np.asarray(g.angles)) - 90.0
    return iradon(
        sino, theta=theta, filter_name=filter_name, circle=False, output_size=g.image_size
    )[None]


# -- experiments ---------------------------------------------------------------------------------


def _tensor(image: np.ndarray, task: str) -> torch.Tensor:
    """``(H, W)`` / ``(3, H, W)`` -> ``(1, C, H, W)`` float32 in the task's layout."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if x.ndim == 2:
        x = x[None]
    if get_task(task).channels == 2:
        x = torch.cat([x, torch.zeros_like(x)])
    return x[None]


def _operator(task: str, size: int, seed: int):
    spec = get_task(task)
    masks = None
    if spec.channels == 2:
        masks = mri_masks(spec.physics_defaults, size, [seed])
    return build_operator(task, size, masks=masks)  # float32, as luser runs


def _measure(task: str, image: np.ndarray, seed: int) -> tuple:
    x = _tensor(image, task)
    op = _operator(task, x.shape[-1], seed)
    y = simulate(op, build_noise(task), x, torch.Generator().manual_seed(seed))
    return op, x, y


def _run(method: str, task: str, op, y: torch.Tensor, **kw) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = reconstruct_classical(method, task, op, y, **kw)
    return out[0].cpu().numpy(), time.perf_counter() - t0


def report(args: argparse.Namespace) -> dict:
    """The measurements on the reporting images."""
    rows: list[dict] = []
    bars: list[dict] = []

    def add(task: str, image: str, method: str, target, pred, seconds: float) -> dict:
        row = {"task": task, "image": image, "method": method, **metrics(task, target, pred)}
        row["seconds"] = round(seconds, 2)
        rows.append(row)
        print(
            f"{task:7s} {image:28s} {method:22s} PSNR {row['psnr']:6.2f}  SSIM {row['ssim']:.4f}"
            f"  ({seconds:.1f} s)",
            flush=True,
        )
        return row

    def bar(name: str, value: float, threshold: float, relation: str) -> None:
        met = value >= threshold if relation == ">=" else value <= threshold
        bars.append(
            {
                "bar": name,
                "value": round(value, 3),
                "threshold": threshold,
                "relation": relation,
                "met": bool(met),
            }
        )

    # CT
    for n in args.ct_sizes:
        gt = ct_small(n)
        op, x, y = _measure("ct", gt, args.seed)
        target = x[0].numpy()
        fbp, t_fbp = _run("fbp", "ct", op, y)
        t0 = time.perf_counter()
        sk = skimage_fbp(op, y)
        t_sk = time.perf_counter() - t0
        tv, t_tv = _run("tv", "ct", op, y)
        label = f"CT_small.dcm {n}x{n}"
        r_fbp = add("ct", label, "FBP (ours, Hann)", target, fbp, t_fbp)
        r_sk = add("ct", label, "FBP (skimage iradon, Hann)", target, sk, t_sk)
        r_tv = add("ct", label, "TV", target, tv, t_tv)
        bar(
            f"CT {n}: abs(PSNR(our FBP) - PSNR(skimage FBP)) <= 1.5 dB",
            abs(r_fbp["psnr"] - r_sk["psnr"]),
            1.5,
            "<=",
        )
        bar(f"CT {n}: PSNR(TV) - PSNR(our FBP) >= 1 dB", r_tv["psnr"] - r_fbp["psnr"], 1.0, ">=")

    # MRI
    mr_images = {"example4d.nii.gz slice 12": brain_epi(), "MR_small.dcm": mr_small()}
    for task in ("mri4x", "mri8x"):
        for name, image in mr_images.items():
            op, x, y = _measure(task, image, args.seed)
            target = x[0].numpy()
            zf, t_zf = _run("zero-filled", task, op, y)
            tv, t_tv = _run("tv", task, op, y)
            r_zf = add(task, name, "zero-filled", target, zf, t_zf)
            r_tv = add(task, name, "TV", target, tv, t_tv)
            if task == "mri4x" and name.startswith("example4d"):
                bar(
                    "MRI 4x (brain EPI): PSNR(TV) - PSNR(zero-filled) >= 0.5 dB",
                    r_tv["psnr"] - r_zf["psnr"],
                    0.5,
                    ">=",
                )

    # Deblurring
    for name in ("astronaut", "coffee", "chelsea"):
        image = photo(name, args.photo_size)
        op, x, y = _measure("deblur", image, args.seed)
        target = x[0].numpy()
        blurred, t_in = _run("input", "deblur", op, y)
        tv, t_tv = _run("tv", "deblur", op, y)
        label = f"{name} {args.photo_size}x{args.photo_size}"
        r_in = add("deblur", label, "blurred input", target, blurred, t_in)
        r_tv = add("deblur", label, "TV", target, tv, t_tv)
        bar(
            f"Deblur ({name}): PSNR(TV) - PSNR(input) >= 1 dB",
            r_tv["psnr"] - r_in["psnr"],
            1.0,
            ">=",
        )
    return {"rows": rows, "bars": bars}


def tune(args: argparse.Namespace) -> dict:
    """Sweep the relative TV weight on the tuning images (none of them is reported)."""
    grids = {
        "deblur": [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3],
        "ct": [float(v) for v in args.ct_grid.split(",")],
        "mri4x": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
        "mri8x": [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2],
    }
    images = {
        "deblur": {
            f"{p} {args.photo_size}": photo(p, args.photo_size)
            for p in ("rocket", "immunohistochemistry", "motorcycle")
        },
        "ct": {f"{k} {args.ct_tune_size}": v for k, v in ct_phantoms(args.ct_tune_size).items()},
        "mri4x": {
            "anatomical.nii slice 12": anatomical(0),
            "anatomical.nii slice 17": anatomical(5),
            "example4d vol 1 slice 5": brain_epi(5, 1),
            "example4d vol 1 slice 19": brain_epi(19, 1),
        },
    }
    images["mri8x"] = images["mri4x"]
    out: dict = {}
    for task in args.tasks:
        grid = grids[task]
        table = []
        for name, image in images[task].items():
            op, x, y = _measure(task, image, args.seed)
            target = x[0].numpy()
            base = {"deblur": "input", "ct": "fbp"}.get(task, "zero-filled")
            b, _ = _run(base, task, op, y)
            base_psnr = metrics(task, target, b)["psnr"]
            ys = y.expand(len(grid), *y.shape[1:])
            t0 = time.perf_counter()
            recs = reconstruct_classical("tv", task, op, ys, tv_weight=torch.tensor(grid))
            psnrs = [metrics(task, target, r.numpy())["psnr"] for r in recs]
            seconds = time.perf_counter() - t0
            table.append(
                {"image": name, "baseline": base, "baseline_psnr": base_psnr, "tv_psnr": psnrs}
            )
            print(
                f"{task:7s} {name:28s} {base} {base_psnr:6.2f} | "
                + " ".join(f"{w:g}:{p:.2f}" for w, p in zip(grid, psnrs, strict=True))
                + f" ({seconds:.0f} s)",
                flush=True,
            )
        gains = np.array([[p - r["baseline_psnr"] for p in r["tv_psnr"]] for r in table])
        best = int(np.argmax(gains.mean(0)))
        print(f"{task}: best mean gain {gains.mean(0)[best]:.2f} dB at weight {grid[best]:g}")
        key = (
            task
            if task != "ct" or args.ct_tune_size == 127
            else f"ct ({args.ct_tune_size} x {args.ct_tune_size})"
        )
        out[key] = {
            "grid": grid,
            "images": table,
            "best": grid[best],
            "iterations": TV_DEFAULTS[task].iterations,
        }
    return out


# -- output --------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown(result: dict) -> str:
    d = TV_DEFAULTS
    lines = [
        "# Classical baselines on real images",
        "",
        f"Command: `{result['command']}` (seed {result['seed']}), {result['date']}.",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"torch {result['torch']}, {result['machine']['torch_threads']} torch thread(s).",
        "",
        "TV = `reconstruct_classical('tv', ...)` with the defaults of `luser_cli.classical."
        "TV_DEFAULTS` (relative weight; PDHG iterations): "
        + ", ".join(f"{t} {v.weight:g}; {v.iterations}" for t, v in d.items())
        + ".",
        "",
        "Images reported (none used for tuning): CT: pydicom `CT_small.dcm` (real CT, HU -> "
        "mu = 20/m (1 + HU/1000), x = mu / 81.35858, clipped to [0, 1]); MRI: nibabel "
        "`example4d.nii.gz` (real EPI brain), volume 0, axial slice 12, and pydicom "
        "`MR_small.dcm`, each scaled to [0, 1] by its max and zero-padded to a square; "
        "deblurring: scikit-image `astronaut`, `coffee`, `chelsea`, centre square crop resized.",
        "",
        "| task | image | method | PSNR (dB) | SSIM | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['task']} | {r['image']} | {r['method']} | {r['psnr']:.2f} | "
            f"{r['ssim']:.4f} | {r['seconds']:.1f} |"
        )
    lines += ["", "## Bars (issue 2)", "", "| bar | value (dB) | met |", "|---|---|---|"]
    for b in result["bars"]:
        lines.append(f"| {b['bar']} | {b['value']:.2f} | {'yes' if b['met'] else 'NO'} |")
    lines += [
        "",
        "Conventions: CT PSNR/SSIM with data range = gt.max - gt.min per image (LoDoPaB); MRI on "
        "magnitude images with data range = target max and a 7x7 SSIM window (fastMRI); "
        "deblurring on RGB in [0, 1] with data range 1. Physics: the task defaults (CT 200 of "
        "1000 LoDoPaB angles, post-log Poisson N0 = 4096; MRI fastMRI-style column masks, 4x "
        "centre 0.08 / 8x centre 0.04, masks and noise drawn with the seed, noise-free k-space "
        "as the task default; deblurring 9x9 Gaussian of variance 5, circular, AWGN 0.01). "
        "skimage's FBP: `iradon(filter_name='hann', circle=False)` on our noisy sinogram, "
        "linearly interpolated onto skimage's one-pixel detector bins (angle - 90 degrees, "
        "divided by the pixel size).",
    ]
    tuning = result.get("tuning")
    if tuning:
        lines += [
            "",
            "## Tuning (other images)",
            "",
            "The relative TV weight is `lambda / (scale * gain)` in `1/2 ||Ax - y||^2 + lambda "
            "TV(x)`, with `scale` the 99th percentile of the pixel magnitude of the task's "
            "reference image (the blurred input, the Hann FBP, the zero-filled image) and `gain` = "
            "`||A||^2` (deblur, MRI: 1) or `||A||^2 N / 362` (CT). The defaults are the sweep's "
            "best mean PSNR gain over the baseline, on images that are not reported above:",
            "",
            "- deblur: scikit-image `rocket`, `immunohistochemistry`, `motorcycle_left` (centre "
            "square crop, resized);",
            "- CT: scikit-image Shepp-Logan, two dival-style random ellipse phantoms "
            "(`luser_cli.data.phantoms`, seeds 1 and 2, scaled to max 0.35, soft tissue), and "
            "nibabel's `anatomical.nii` slice 12 as an attenuation map (max 0.4); at 127 x 127 "
            "(the default) and 64 x 64 (to check that `gain` makes the weight size-independent);",
            "- MRI: nibabel `anatomical.nii` slices 12 and 17 (96 x 96) and `example4d.nii.gz` "
            "volume 1 slices 5 and 19 (another volume and slices than the reported one).",
        ]
        for task, t in tuning["tasks"].items():
            head = " | ".join(f"{w:g}" for w in t["grid"])
            lines += [
                "",
                f"**{task}**: best {t['best']:g} ({t['iterations']} PDHG iterations); "
                f"`{t.get('command', tuning['command'])}`, {t.get('date', tuning['date'])}.",
                "",
                f"| image | baseline (dB) | TV at {head} |",
                "|---|---|" + "---|" * len(t["grid"]),
            ]
            for r in t["images"]:
                vals = " | ".join(f"{p:.2f}" for p in r["tv_psnr"])
                lines.append(
                    f"| {r['image']} | {r['baseline']} {r['baseline_psnr']:.2f} | {vals} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tune", action="store_true", help="sweep TV weights on the tuning images")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=["deblur", "ct", "mri4x", "mri8x"],
        help="tasks to tune (with --tune)",
    )
    p.add_argument(
        "--ct-sizes",
        type=int,
        nargs="+",
        default=[127, 181],
        help="CT image sides to report (odd; 127 crops CT_small's 128, others resize it)",
    )
    p.add_argument("--ct-tune-size", type=int, default=127, help="CT image side for --tune")
    p.add_argument(
        "--ct-grid",
        default="0.001,0.002,0.003,0.004,0.006,0.008",
        help="relative CT weights to sweep (with --tune)",
    )
    p.add_argument("--photo-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="noise and mask seed")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the tensors are small, and on a busy 2-core machine "
        "multi-threaded small ops stall)",
    )
    p.add_argument("--out", type=Path, default=HERE / "classical-baselines.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    json_path = args.out.with_suffix(".json")
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    stamp = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "torch": torch.__version__,
        "seed": args.seed,
    }
    if args.tune:
        tasks = {
            k: {**v, "command": stamp["command"], "date": stamp["date"]}
            for k, v in tune(args).items()
        }
        old = previous.get("tuning", {}).get("tasks", {})
        previous["tuning"] = {**stamp, "tasks": {**old, **tasks}}
        result = previous
    else:
        t0 = time.perf_counter()
        result = {**stamp, **report(args), "tuning": previous.get("tuning")}
        result["total_seconds"] = round(time.perf_counter() - t0, 1)
        result["defaults"] = {t: vars(v) for t, v in TV_DEFAULTS.items()}
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    if "rows" in result:
        args.out.write_text(markdown(result))
        print(f"wrote {args.out} and {json_path}")
    else:
        print(f"wrote {json_path} (run without --tune to write the Markdown)")


if __name__ == "__main__":
    main()
