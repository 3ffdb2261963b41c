"""What a bench run shows: findings, the paper's numbers beside ours, Markdown and a plot.

Everything here reads the cells :mod:`luser_cli.bench.runner` produced; nothing is measured or
typed in by hand except the paper's published numbers (:mod:`luser_cli.bench.paper`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from luser_cli.bench.paper import (
    PAPER_DATA,
    PAPER_IMAGE_SIZE,
    PAPER_TABLE4,
    paper_batch_24gb,
    paper_score,
)
from luser_cli.io.atomic import atomic_write

__all__ = ["findings", "markdown_report", "paper_section", "plot_report", "scale_section"]

MODEL_LABEL = {
    "lu-dncnn": "LU-DnCNN",
    "deq4ip": "DEQ4IP",
    "luser-sw": "LUSER-SW",
    "luser-dw": "LUSER-DW",
}
TASK_LABEL = {"deblur": "Deblurring", "ct": "CT", "mri4x": "MRI 4x", "mri8x": "MRI 8x"}


def scale_section(settings: Any) -> dict[str, Any]:
    """How the bench's scale differs from the paper's, per task."""
    from luser_cli.tasks import get_task

    return {
        "ours": {
            "data": "built-in (ellipse phantoms for CT/MRI, scikit-image photo patches for deblur)",
            "image_size": settings.image_size,
            "steps": settings.steps,
            "batch_size": settings.batch_size,
            "samples_seen": settings.steps * settings.batch_size,
            "eval_images": settings.eval_images,
            "device": settings.device,
        },
        "paper": {
            t: {
                "data": PAPER_DATA[t],
                "image_size": PAPER_IMAGE_SIZE[t],
                "preset_image_size": get_task(t).image_size,
            }
            for t in settings.tasks
        },
    }


def paper_section(settings: Any) -> dict[str, Any]:
    """The paper's Table 2 (PSNR/SSIM) and Table 3 (24 GB batch) entries for the bench's cells,
    and Table 4, for side-by-side reporting."""
    table2: dict[str, Any] = {}
    batch: dict[str, Any] = {}
    for task, model, loss in settings.cells():
        score = paper_score(task, model, loss)
        if score is not None:
            table2.setdefault(task, {}).setdefault(model, {})[loss] = {
                "psnr": score[0],
                "ssim": score[1],
            }
        batch.setdefault(task, {})[model] = paper_batch_24gb(task, model)
    return {"table2": table2, "table3_batch_24gb": batch, "table4": PAPER_TABLE4}


# -- findings -----------------------------------------------------------------------------------
def _ok(cells: Sequence[dict[str, Any]], task: str, model: str, loss: str) -> dict | None:
    for c in cells:
        if (c["task"], c["model"], c["loss"]) == (task, model, loss) and c["status"] == "ok":
            return c
    return None


def _paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """PSNR difference a - b on the same test images: mean, std, images where a wins."""
    pa, pb = a["eval"]["psnr_per_image"], b["eval"]["psnr_per_image"]
    d = [x - y for x, y in zip(pa, pb, strict=False) if x is not None and y is not None]
    if not d:
        return {"mean_db": None, "std_db": None, "wins": 0, "n": 0}
    return {
        "mean_db": round(float(np.mean(d)), 3),
        "std_db": round(float(np.std(d)), 3),
        "wins": int(sum(x > 0 for x in d)),
        "n": len(d),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a / b):
        return None
    return round(a / b, 3)


def _mem(cell: dict[str, Any]) -> float | None:
    m = cell.get("memory")
    return None if not m else m.get("peak_mb_batch1")


def findings(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per task and loss: LUSER-DW / LUSER-SW against LU-DnCNN (paired PSNR differences),
    A/Aᵀ applications against DEQ4IP, time per step and memory against LU-DnCNN."""
    out: dict[str, Any] = {}
    keys = dict.fromkeys((c["task"], c["loss"]) for c in cells)
    for task, loss in keys:
        f: dict[str, Any] = {}
        lu = _ok(cells, task, "lu-dncnn", loss)
        deq = _ok(cells, task, "deq4ip", "final")
        for name in ("luser-dw", "luser-sw"):
            c = _ok(cells, task, name, loss)
            if c is None:
                continue
            entry: dict[str, Any] = {"psnr": c["eval"]["psnr"]}
            if lu is not None:
                entry["vs_lu_dncnn"] = _paired(c, lu)
                entry["time_per_step_ratio_vs_lu_dncnn"] = _ratio(
                    c["train"]["time_per_step_s"], lu["train"]["time_per_step_s"]
                )
                entry["memory_ratio_lu_dncnn_over_this"] = _ratio(_mem(lu), _mem(c))
                entry["parameter_ratio_lu_dncnn_over_this"] = _ratio(
                    lu.get("parameters"), c.get("parameters")
                )
            if deq is not None:
                entry["operator_applications_ratio_deq4ip_over_this"] = _ratio(
                    deq["eval"]["operator_applications_per_image"],
                    c["eval"]["operator_applications_per_image"],
                )
                entry["vs_deq4ip"] = _paired(c, deq) if loss == "final" else None
            best = c["eval"].get("model_minus_best_classical_db")
            entry["minus_best_classical_db"] = best
            f[name] = entry
        if f:
            out[f"{task}/{loss}"] = f
    return out


# -- Markdown -----------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ".2f", none: str = "–") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def _score(c: dict[str, Any] | None) -> str:
    if c is None:
        return "–"
    if c["status"] != "ok":
        return "failed"
    e = c["eval"]
    return f"{_fmt(e['psnr'])} ± {_fmt(e['psnr_std'])} / {_fmt(e['ssim'], '.3f')}"


def _table2(doc: dict[str, Any]) -> list[str]:
    s = doc["settings"]
    cells = doc["cells"]
    lines = [
        "## Table 2 shape: PSNR (dB, mean ± std) / SSIM on held-out built-in test images",
        "",
        f"Ours: {s['steps']} steps x batch {s['batch_size']} at {s['image_size']} x "
        f"{s['image_size']} px on built-in data, {s['eval_images']} test images, seed "
        f"{s['seed']}. **Paper** (in bold brackets): full data sets at full size (see Scale), "
        "far longer training. Compare rankings within a column, not values across the two.",
        "",
    ]
    header = "| Task | Loss | " + " | ".join(MODEL_LABEL[m] for m in s["models"])
    lines += [header + " | best classical |", "|" + "---|" * (len(s["models"]) + 3)]
    classical = doc.get("classical", {})
    for task in s["tasks"]:
        for loss in s["losses"]:
            row = [TASK_LABEL.get(task, task), loss]
            for m in s["models"]:
                c = next(
                    (x for x in cells if (x["task"], x["model"], x["loss"]) == (task, m, loss)),
                    None,
                )
                paper = paper_score(task, m, loss)
                p = f" **[{paper[0]:.2f} / {paper[1]:.3f}]**" if paper else ""
                row.append(_score(c) + p if (c or paper) else "n/a")
            cl = classical.get(task)
            row.append(
                f"{cl['method']} {_fmt(cl['psnr'])} / {_fmt(cl['ssim'], '.3f')}" if cl else "–"
            )
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _table4(doc: dict[str, Any]) -> list[str]:
    lines = [
        "## Table 4 shape: cost, measured (final-output loss cells)",
        "",
        "Time per step: mean over steps 2.. of training on this CPU. Inference: time per test "
        "image. Memory: peak live tensor storage of one real training step at batch 1 on this "
        "CPU at the bench size, and the largest batch on a 24 GB GPU at the paper's size from "
        "the memprobe `sim` oracle (paper Table 3's batch in brackets). FP iterations: forward "
        "fixed-point iterations per solve (training mean). Bwd conv.: share of training steps "
        "whose implicit backward solves all converged (where not, the gradient was "
        "approximate). A/Aᵀ: operator applications per reconstruction.",
        "",
        "| Task | Model | Params | s/step | s/image | train MB/sample | 24 GB batch [paper] "
        "| FP iters | Bwd conv. | A/Aᵀ per recon |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cells"]:
        if c["loss"] != "final":
            continue
        tr, ev = c.get("train") or {}, c.get("eval") or {}
        sim = c.get("memory_sim_24gb") or {}
        paper = paper_batch_24gb(c["task"], c["model"])
        batch = _fmt(sim.get("max_batch"), "d")
        if paper is not None:
            batch += f" [{paper if paper else '–'}]"
        lines.append(
            "| "
            + " | ".join(
                [
                    TASK_LABEL.get(c["task"], c["task"]),
                    MODEL_LABEL[c["model"]],
                    _fmt(c.get("parameters"), ","),
                    _fmt(tr.get("time_per_step_s")),
                    _fmt(ev.get("seconds_per_image"), ".3f"),
                    _fmt(_mem(c), ".1f"),
                    batch,
                    _fmt(tr.get("fp_forward_iters_mean"), ".1f"),
                    _pct(tr.get("bwd_converged_step_fraction")),
                    _fmt(ev.get("operator_applications_per_image"), ".0f"),
                ]
            )
            + " |"
        )
    lines += ["", "The paper's qualitative Table 4, for reference:", ""]
    lines += ["| Property | LU | DEQ4IP | LUSER |", "|---|---|---|---|"]
    for prop, row in PAPER_TABLE4.items():
        lines.append(f"| {prop} | {row['lu']} | {row['deq4ip']} | {row['luser']} |")
    return lines


def _pct(value: float | None) -> str:
    """``87 %``, or ``–`` when not recorded (LU-DnCNN, Jacobian-free, older cells)."""
    return "–" if value is None else f"{value:.0%}"


def _times(ratio: float, fewer: str, more: str) -> str:
    """``2.0x fewer`` for a ratio of 2, ``2.0x more`` for 0.5."""
    return f"{ratio:.1f}x {fewer}" if ratio >= 1 else f"{1 / ratio:.1f}x {more}"


def _findings_text(doc: dict[str, Any]) -> list[str]:
    lines = ["## Findings (computed from the cells above)", ""]
    for key, f in doc.get("findings", {}).items():
        task, loss = key.split("/")
        for name, e in f.items():
            parts = [f"**{TASK_LABEL.get(task, task)}, {loss} loss, {MODEL_LABEL[name]}**:"]
            vs = e.get("vs_lu_dncnn")
            if vs and vs["mean_db"] is not None:
                verdict = "beats" if vs["mean_db"] > 0 else "trails"
                parts.append(
                    f"{verdict} LU-DnCNN by {abs(vs['mean_db']):.2f} dB (paired std "
                    f"{vs['std_db']:.2f}, better on {vs['wins']}/{vs['n']} images)"
                )
            if e.get("parameter_ratio_lu_dncnn_over_this"):
                parts.append(
                    _times(e["parameter_ratio_lu_dncnn_over_this"], "fewer", "more") + " parameters"
                )
            if e.get("time_per_step_ratio_vs_lu_dncnn"):
                parts.append(
                    f"{e['time_per_step_ratio_vs_lu_dncnn']:.1f}x LU-DnCNN's time per step"
                )
            if e.get("memory_ratio_lu_dncnn_over_this"):
                parts.append(
                    f"{e['memory_ratio_lu_dncnn_over_this']:.1f}x less training memory per sample"
                )
            if e.get("operator_applications_ratio_deq4ip_over_this"):
                parts.append(
                    _times(e["operator_applications_ratio_deq4ip_over_this"], "fewer", "more")
                    + " A/Aᵀ applications than DEQ4IP"
                )
            if e.get("minus_best_classical_db") is not None:
                parts.append(f"{e['minus_best_classical_db']:+.2f} dB vs the best classical method")
            lines.append("- " + parts[0] + " " + "; ".join(parts[1:]) + ".")
    failed = [c for c in doc["cells"] if c["status"] != "ok"]
    for c in failed:
        lines.append(f"- {c['task']} {c['model']} {c['loss']}: FAILED: {c['reason']}")
    return lines


def markdown_report(doc: dict[str, Any], notes: str = "") -> str:
    """The bench JSON document as Markdown (``notes``: extra text placed after the tables)."""
    m, s = doc["machine"], doc["settings"]
    lines = [
        "# luser bench: the paper's comparison at CPU scale",
        "",
        f"- command: `{doc['command']}`",
        f"- date: {doc['date']} (finished {doc.get('finished') or 'not finished'}; "
        f"{_fmt(doc.get('elapsed_s'), '.0f')} s)",
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')}, "
        f"{m.get('torch_threads')} threads, Python {m.get('python')}; load average at start "
        f"{m.get('load_average_start')}, at end {m.get('load_average_end')}",
        f"- learning rates (presets): {s.get('learning_rates')}",
        "",
        "## Scale",
        "",
        f"Ours: built-in data at {s['image_size']} x {s['image_size']} px, {s['steps']} steps "
        f"x batch {s['batch_size']} = {s['steps'] * s['batch_size']} training samples per model, "
        "same data, seed and budget for every model of a task. Paper: "
        + "; ".join(
            f"{TASK_LABEL.get(t, t)} {v['data']} at "
            f"{v['image_size'] or 'unstated size'}" + (" px" if v["image_size"] else "")
            for t, v in doc["scale"]["paper"].items()
        )
        + ", trained to convergence on one 24 GB GPU.",
        "",
    ]
    lines += [*_table2(doc), "", *_table4(doc), "", *_findings_text(doc)]
    if notes:
        lines += ["", notes.rstrip()]
    return "\n".join(lines) + "\n"


# -- plot ---------------------------------------------------------------------------------------
def plot_report(doc: dict[str, Any], out: Path) -> None:
    """PSNR against measured training memory per sample, one panel per task (atomic PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = doc["settings"]["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    markers = {"final": "o", "aux": "s"}
    colors = {"lu-dncnn": "C0", "deq4ip": "C1", "luser-sw": "C2", "luser-dw": "C3"}
    for ax, task in zip(axes[0], tasks, strict=True):
        for c in doc["cells"]:
            if c["task"] != task or c["status"] != "ok" or _mem(c) is None:
                continue
            ax.scatter(
                _mem(c),
                c["eval"]["psnr"],
                marker=markers.get(c["loss"], "o"),
                color=colors.get(c["model"], "k"),
                label=f"{MODEL_LABEL[c['model']]} ({c['loss']})",
            )
        cl = doc.get("classical", {}).get(task)
        if cl and cl.get("psnr") is not None:
            ax.axhline(cl["psnr"], color="gray", ls="--", lw=1, label=f"{cl['method']}")
        ax.set(
            title=TASK_LABEL.get(task, task),
            xlabel="training memory (MB / sample)",
            ylabel="test PSNR (dB)",
        )
        ax.set_xscale("log")
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(
        f"luser bench: {doc['settings']['image_size']} px, {doc['settings']['steps']} steps",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_write(out, make_parents=True) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
