"""Replace some models' cells of a ``luser bench`` JSON by those of a later re-run of just those
models, and regenerate the Markdown report, findings and plot.

Used when one model changed and the others did not (issue 20: DEQ4IP's contractive map): the
re-run trains the changed model with the same data, seed and budget as the full run, and the
merged document records both runs (``reruns``) so every cell says where it comes from::

    luser bench --model deq4ip --json RERUN.json --threads 1
    python examples/bench_merge.py examples/paper-comparison/results.json RERUN.json \
        --model deq4ip --out examples/paper-comparison/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from luser_cli.bench.report import findings, markdown_report, plot_report


def merge(base: dict, rerun: dict, models: list[str]) -> dict:
    """``base`` with the cells of ``models`` taken from ``rerun`` (same tasks and losses)."""
    if base["settings"]["steps"] != rerun["settings"]["steps"] or (
        base["settings"]["image_size"] != rerun["settings"]["image_size"]
    ):
        raise SystemExit("the re-run has another budget (steps / image size) than the base run")
    new = {(c["task"], c["model"], c["loss"]): c for c in rerun["cells"] if c["model"] in models}
    cells = []
    for c in base["cells"]:
        key = (c["task"], c["model"], c["loss"])
        if c["model"] in models:
            if key not in new:
                raise SystemExit(f"the re-run has no cell for {key}")
            c = dict(new[key], rerun=True)
        cells.append(c)
    out = dict(base, cells=cells, findings=findings(cells))
    out["reruns"] = [
        *base.get("reruns", []),
        {
            "models": models,
            "command": rerun["command"],
            "date": rerun["date"],
            "finished": rerun.get("finished"),
            "elapsed_s": rerun.get("elapsed_s"),
            "machine": rerun["machine"],
        },
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("rerun", type=Path)
    ap.add_argument("--model", nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    doc = merge(json.loads(args.base.read_text()), json.loads(args.rerun.read_text()), args.model)
    r = doc["reruns"][-1]
    m = r["machine"]
    notes = (
        f"**Re-run cells** ({', '.join(r['models'])}): `{r['command']}`, {r['date']} "
        f"({r['elapsed_s']:.0f} s; {m.get('cpu')}, {m.get('torch_threads')} thread(s), load "
        f"average {m.get('load_average_start')} at the start, {m.get('load_average_end')} at the "
        "end). Their times per step were measured under other load than the base run's and are "
        "not comparable with the other columns; PSNR, SSIM, iterations, A/Aᵀ applications and "
        "memory are."
    )
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(markdown_report(doc, notes), encoding="utf-8")
    plot_report(doc, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
