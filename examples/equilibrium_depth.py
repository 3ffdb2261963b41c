"""LUSER's equilibrium depth study: does a deeper (less contractive) shallow-block equilibrium buy
quality at equal training time?

Each variant trains LUSER-DW on MRI 4x with the same data, seed, steps and schedule; only the
equilibrium settings differ:

- ``base``: the shipped recipe (last GroupNorm gain 0.01 at initialisation, no penalty);
- ``penalty``: the same with the Jacobian regulariser (Bai et al. 2021, ``--jacobian-penalty``);
- ``gain0.1-penalty`` / ``gain1-penalty``: a larger starting gain (a deeper equilibrium from the
  start) kept contractive by the penalty;
- ``gain1``: PyTorch's default gain without the penalty (the control);
- ``k4-gain0.1-penalty``: half the stages, each with a deeper equilibrium.

Each run is then evaluated with ``luser eval`` on the built-in test split (held-out photos, a
held-out MR volume and phantoms, with TV on the same images), which also measures each stage's
rho(J) at the fixed point and its iterations. Usage::

    python examples/equilibrium_depth.py run --runs RUNS [--only NAME ...]   # train + evaluate
    python examples/equilibrium_depth.py cost --runs RUNS                    # CPU s / step
    python examples/equilibrium_depth.py warm --runs RUNS                    # warm starts
    python examples/equilibrium_depth.py report --runs RUNS                  # tables

``run`` skips a variant whose evaluation JSON exists, so several ``--only`` processes can share
the work (one thread each). The runs' wall times are not comparable when they shared the CPU
with other work, so ``cost`` measures each trained model's training step in CPU seconds (one
thread, the variants alternating on one batch, medians of 3): the cost at equal time. ``report``
writes ``examples/equilibrium-depth.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
COMMON = [
    "--task", "mri4x", "--model", "luser-dw", "--image-size", "64", "--builtin", "mix-scans",
    "--random-phase", "--loss", "psnr", "--scheduler", "wsd", "--lr", "1e-3", "--steps", "200",
    "--batch-size", "4", "--fp-tol", "0.01", "--bwd-tol", "0.01", "--threads", "1", "--seed", "0",
    "--val-every", "50", "--save-every", "50", "--no-progress",
]  # fmt: skip
PENALTY = "2"
VARIANTS: dict[str, list[str]] = {
    "base": [],
    "penalty": ["--jacobian-penalty", PENALTY],
    "gain0.1-penalty": ["--init-gain", "0.1", "--jacobian-penalty", PENALTY],
    "gain1-penalty": ["--init-gain", "1", "--jacobian-penalty", PENALTY],
    "gain1": ["--init-gain", "1"],
    "k4-gain0.1-penalty": ["--stages", "4", "--init-gain", "0.1", "--jacobian-penalty", PENALTY],
}
EVAL = ["--split", "test", "--n", "32", "--methods", "tv,zero-filled", "--threads", "1"]


def run(runs: Path, names: list[str]) -> None:
    for name in names:
        out = runs / name
        result = runs / f"{name}.eval.json"
        if result.exists():
            continue
        if not _finished(out):  # a stopped run continues where it stopped
            resume = ["--resume"] if (out / "checkpoint_last.pt").exists() else []
            cmd = ["luser", "train", *COMMON, *VARIANTS[name], *resume, "--out", str(out)]
            with open(runs / f"{name}.log", "a") as log:
                subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        cmd = ["luser", "eval", str(out), *EVAL, "--json", str(result)]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)


def cost(runs: Path, names: list[str], repeats: int = 3) -> None:
    """CPU seconds per training step (forward, loss and penalty, backward) of each trained
    variant (its last checkpoint, its own settings), one thread, variants alternating."""
    import time

    from luser_cli.data.sources import open_preset_data
    from luser_cli.runs import load_trained
    from luser_cli.training.batches import BatchMaker, stack_items
    from luser_cli.training.step import build_optimizer, forward_backward

    torch.set_num_threads(1)
    cases = {}
    for name in names:
        if (runs / name / "checkpoint_last.pt").exists():
            tm = load_trained(runs / name, "cpu", "last")
            tm.model.train()
            cases[name] = (tm.model, tm.preset, build_optimizer(tm.model, tm.preset.train))
    first = next(iter(cases.values()))[1]
    maker = BatchMaker.for_preset(first, torch.device("cpu"))
    x, meta = stack_items(open_preset_data(first, "val", None, 4), range(4))
    batch = maker.make(x, meta, 0, 0)
    times: dict[str, list[float]] = {n: [] for n in cases}
    for k in range(repeats + 1):  # the first round warms up
        for name, (model, preset, opt) in cases.items():
            c0 = time.process_time()
            forward_backward(model, opt, batch, preset.train, torch.device("cpu"))
            if k:
                times[name].append(time.process_time() - c0)
    out = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
    (runs / "cost.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def warm(runs: Path, names: list[str]) -> None:
    """Each trained variant on the test split with cold (zero) and warm starts
    (``model.warm_start``: each stage's solve from the previous stage's fixed point): PSNR and
    forward iterations per image. Warm-starting changes the solve, not the trained function,
    so it is measured on the trained models, without training."""
    from luser_cli.evaluation.runner import evaluate
    from luser_cli.runs import load_trained

    torch.set_num_threads(1)
    out = {}
    for name in names:
        if not (runs / name / "checkpoint_best.pt").exists():
            continue
        tm = load_trained(runs / name, "cpu")
        row = {}
        for start in (False, True):
            tm.model.warm_start = start
            m = evaluate(tm, data=None, split="test", image_size=64, n_images=32, methods=[])
            m = m["metrics"]["model"]
            row["warm" if start else "cold"] = {
                "psnr": m["psnr"],
                "forward_iterations_per_image": m["fp_forward_iterations_per_image"],
            }
        out[name] = row
        print(name, json.dumps(row), flush=True)
    (runs / "warm.json").write_text(json.dumps(out, indent=1) + "\n")


def _finished(out: Path) -> bool:
    summary = out / "run.json"
    steps = int(COMMON[COMMON.index("--steps") + 1])
    return summary.exists() and json.loads(summary.read_text()).get("steps", 0) >= steps


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(runs: Path, name: str, costs: dict[str, float]) -> dict:
    ev = json.loads((runs / f"{name}.eval.json").read_text())
    rows = _rows(runs / name / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r and "val_psnr" not in r]
    vals = [r for r in rows if "val_psnr" in r]
    time_at = {r["step"]: r["time_s"] for r in steps}
    stages = ev["equilibria"]["stages"]
    rho = [s["jacobian_spectral_radius"] for s in stages]
    conv = [r["fp_backward_converged"] for r in steps if "fp_backward_converged" in r]
    return {
        "variant": name,
        "flags": VARIANTS[name],
        "test_psnr": ev["metrics"]["model"]["psnr"],
        "test_ssim": ev["metrics"]["model"]["ssim"],
        "tv_psnr": ev["metrics"]["tv"]["psnr"],
        "model_minus_tv_db": ev["metrics"]["model"]["psnr"] - ev["metrics"]["tv"]["psnr"],
        "train_wall_seconds_shared_cpu": sum(r["time_s"] for r in steps),
        "val_curve": [(v["step"], time_at.get(v["step"]), v["val_psnr"]) for v in vals],
        "rho_mean": sum(rho) / len(rho),
        "rho_max": max(s["jacobian_spectral_radius_max"] for s in stages),
        "forward_iterations": sum(s["forward_iterations"] for s in stages) / len(stages),
        "backward_iterations": sum(s["backward_iterations"] for s in stages) / len(stages),
        "backward_converged_steps": sum(c >= 1.0 for c in conv) / max(len(conv), 1),
        "cpu_s_per_step": costs.get(name),
        "stages": stages,
    }


def report(runs: Path) -> None:
    names = [n for n in VARIANTS if (runs / f"{n}.eval.json").exists()]
    cost_file = runs / "cost.json"
    costs = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    results = [summarise(runs, n, costs) for n in names]
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    doc = {"command": " ".join(["luser train", *COMMON]), "machine": machine, "results": results}
    (HERE / "equilibrium-depth.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "| variant | test PSNR | SSIM | model - TV | rho(J) mean / max | fwd / bwd iters per "
        "stage | bwd converged (steps) | CPU s / step |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['test_psnr']:.2f} | {r['test_ssim']:.3f} | "
            f"{r['model_minus_tv_db']:+.2f} | {r['rho_mean']:.3f} / {r['rho_max']:.3f} | "
            f"{r['forward_iterations']:.1f} / {r['backward_iterations']:.1f} | "
            f"{r['backward_converged_steps']:.0%} | {r['cpu_s_per_step'] or 0:.2f} |"
        )
    print("\n".join(lines))
    heads = " | ".join(f"val @ {s}" for s, _, _ in results[0]["val_curve"])
    curves = [f"| variant | {heads} |"]
    for r in results:
        curves.append(
            f"| {r['variant']} | " + " | ".join(f"{v:.2f}" for _, _, v in r["val_curve"]) + " |"
        )
    print("\n".join(curves))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("run", "cost", "warm", "report"))
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.action == "run":
        run(args.runs, args.only)
    elif args.action == "cost":
        cost(args.runs, args.only)
    elif args.action == "warm":
        warm(args.runs, args.only)
    else:
        report(args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
