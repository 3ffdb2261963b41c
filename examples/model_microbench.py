"""Micro-benchmark of the four models at the paper's image sizes (issue 3's performance check).

For each task (CT 362 x 362, MRI 320 x 320 by default) and model, one real training step at
batch 1 on this machine, built exactly as ``luser train`` builds it from the paper-recipe presets
(``ct-paper`` for CT; ``--recipe shipped`` for the presets ``luser train`` uses by default):
preset solver settings, Adam, the MSE loss on the final output:

* forward and backward wall time, and both divided by the K = 8 stages;
* forward / backward fixed-point iterations per stage (mean over stages);
* A and Aᵀ applications in the step;
* peak training memory per sample: the peak of live tensor storage during the step (weights,
  Adam state, batch and operator included), tracked with luser's memprobe tracker.

Run::

    python examples/model_microbench.py --json examples/model-microbench.json

Timings depend on the machine and its load; the JSON records both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from luser_cli.bench.machine import load_average, machine_info, now_iso
from luser_cli.bench.memory import build_real_step
from luser_cli.memprobe.presets import RECIPES, probe_preset
from luser_cli.memprobe.tracker import StorageTracker, track_training_state
from luser_cli.models.registry import MODEL_NAMES, count_parameters, is_equilibrium_model
from luser_cli.solvers.config import FP_GRAPHS
from luser_cli.training.step import reconstruction_loss

GIB = 2**30


def one_step(
    task: str,
    model_name: str,
    size: int | None,
    graph: str | None = None,
    recipe: str = "paper",
) -> dict:
    preset = probe_preset(task, size, graph, recipe)
    model, optimizer, b = build_real_step(preset, model_name, 1)
    tracker = StorageTracker()
    track_training_state(tracker, model, optimizer, b)
    b.op.reset_counters()
    with tracker:
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(b.y, b.op, b.x0)
        loss = reconstruction_loss(b.x, out, False)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        del out, loss
    stages = getattr(model, "stages", 1)
    recs = model.records
    row = {
        "task": task,
        "model": model_name,
        "image_size": preset.image_size,
        "parameters": count_parameters(model),
        "fp_graph": preset.solver.graph if is_equilibrium_model(model_name) else None,
        "forward_s": round(t1 - t0, 3),
        "backward_s": round(t2 - t1, 3),
        "forward_s_per_stage": round((t1 - t0) / stages, 3),
        "backward_s_per_stage": round((t2 - t1) / stages, 3),
        "stages": stages,
        "A_calls": b.op.calls_A,
        "At_calls": b.op.calls_A_adjoint,
        "peak_training_gib_per_sample": round(tracker.peak / GIB, 3),
    }
    if recs:
        fwd = [float(r["forward_iterations"].float().mean()) for r in recs]
        bwd = [
            float(r["backward_iterations"].float().mean())
            for r in recs
            if "backward_iterations" in r
        ]
        row["fp_forward_iters_per_solve"] = round(sum(fwd) / len(fwd), 2)
        row["fp_backward_iters_per_solve"] = round(sum(bwd) / len(bwd), 2) if bwd else None
        row["fp_solves"] = len(recs)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["ct", "mri4x"])
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    ap.add_argument("--image-size", type=int, default=None, help="default: the presets' sizes")
    ap.add_argument("--fp-graph", choices=FP_GRAPHS, default=None, help="default: the presets'")
    ap.add_argument("--recipe", choices=RECIPES, default="paper", help="default: the paper's")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    start = now_iso()
    load0 = load_average()
    for task in args.tasks:
        for m in args.models:
            row = one_step(task, m, args.image_size, args.fp_graph, args.recipe)
            rows.append(row)
            print(json.dumps(row), flush=True)
    lu = {r["task"]: r for r in rows if r["model"] == "lu-dncnn"}
    print(
        "\n| task | model | params | fwd s/stage | bwd s/stage | FP iters fwd/bwd "
        "| peak GiB/sample | LU-DnCNN / this |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = lu.get(r["task"])
        peak = r["peak_training_gib_per_sample"]
        ratio = f"{base['peak_training_gib_per_sample'] / peak:.1f}x" if base and peak else "–"
        fwd, bwd = (
            r.get("fp_forward_iters_per_solve", "–"),
            r.get("fp_backward_iters_per_solve", "–"),
        )
        cells = [
            f"{r['task']} {r['image_size']}",
            r["model"],
            f"{r['parameters']:,}",
            str(r["forward_s_per_stage"]),
            str(r["backward_s_per_stage"]),
            f"{fwd} / {bwd}",
            str(peak),
            ratio,
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        doc = {
            "command": "python examples/model_microbench.py "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if v is not None
            ),
            "date": start,
            "machine": {
                **machine_info(),
                "load_average_start": load0,
                "load_average_end": load_average(),
                "torch_threads": torch.get_num_threads(),
            },
            "rows": rows,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
