"""The memory table laid out like paper Table 3: one column per model (and the paper's beside
it), one block of rows per task (``#Params``, then one row per GPU capacity), as a
:class:`rich.table.Table` (:func:`rich_table`) or GitHub Markdown (:func:`markdown_table`).

Reads the rows :func:`luser_cli.memprobe.probe.run_probe` returns (keys in
:data:`~luser_cli.memprobe.probe.ROW_KEYS` and more); nothing is measured here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from luser_cli.memprobe.paper import paper_rounding

__all__ = ["markdown_table", "rich_table", "table_caption"]

DISPLAY_NAMES = {
    "lu-dncnn": "LU-DnCNN",
    "deq4ip": "DEQ4IP",
    "luser-sw": "LUSER-SW",
    "luser-dw": "LUSER-DW",
}
DASH = "–"


def _cell(batch: int | None, rounding: bool, capped: bool = False) -> str:
    if batch is None:
        return ""
    if rounding:
        batch = paper_rounding(batch)
    if batch == 0:
        return DASH
    return f">={batch}" if capped else str(batch)


def _grid(
    rows: Sequence[dict[str, Any]], paper: bool, rounding: bool
) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, body rows and the indices of body rows that start a task group."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    capacities = list(dict.fromkeys(r["gpu_gb"] for r in rows))
    index = {(r["task"], r["model"], r["gpu_gb"]): r for r in rows}
    header = ["Task", "GPU RAM"]
    for m in models:
        header.append(DISPLAY_NAMES.get(m, m))
        if paper:
            header.append("paper")
    body: list[list[str]] = []
    starts: list[int] = []
    for task in tasks:
        starts.append(len(body))
        first = next(r for r in rows if r["task"] == task)
        line = [f"{task} ({first['image_size']} px)", "#Params"]
        for m in models:
            r = next((x for x in rows if x["task"] == task and x["model"] == m), None)
            line.append("" if r is None else f"{r['parameters']:,}")
            if paper:
                pp = None if r is None else r.get("paper_parameters")
                line.append("" if pp is None else f"{pp:,}")
        body.append(line)
        for gb in capacities:
            line = ["", f"{gb:g} GB"]
            for m in models:
                r = index.get((task, m, gb))
                line.append(
                    "" if r is None else _cell(r["max_batch"], rounding, r.get("cap_reached"))
                )
                if paper:
                    line.append("" if r is None else _cell(r.get("paper_max_batch"), False))
            body.append(line)
    return header, body, starts


def table_caption(rows: Sequence[dict[str, Any]], paper: bool, rounding: bool) -> str:
    """What the numbers are, in one or two sentences."""
    backend = rows[0]["backend"] if rows else "?"
    parts = [
        f"Largest training batch per GPU capacity ({backend} backend"
        + ("" if backend != "sim" else ", " + _allowance_text(rows[0]["allowance"]))
        + f"); {DASH} = batch 1 does not fit; >=N = the search stopped at --cap N."
    ]
    if rounding:
        parts.append("Our numbers use the paper's rounding (largest even number, except 1).")
    else:
        parts.append("Our numbers are the true maxima (--paper-rounding rounds them as the paper).")
    if paper:
        parts.append(
            "'paper' = Guan et al., LUSER, Table 3, at the preset image sizes only (even numbers "
            "except 1; its MRI code needed batch >= 2; its deblur image size is not stated)."
        )
    return " ".join(parts)


def _allowance_text(a: dict[str, Any]) -> str:
    return (
        f"allowance: {a['context_gb']:g} GB context + {a['fragmentation']:.0%} fragmentation, "
        f"{a['block_bytes']} B blocks"
    )


def rich_table(rows: Sequence[dict[str, Any]], paper: bool = True, rounding: bool = False):
    """A :class:`rich.table.Table` laid out like paper Table 3."""
    from rich.table import Table

    header, body, starts = _grid(rows, paper, rounding)
    table = Table(title="Max training batch size", caption=table_caption(rows, paper, rounding))
    for i, name in enumerate(header):
        is_paper = paper and i >= 2 and (i - 2) % 2 == 1
        table.add_column(
            name,
            justify="left" if i < 2 else "right",
            style="dim" if is_paper else None,
            header_style="dim" if is_paper else "bold",
        )
    for j, line in enumerate(body):
        table.add_row(*line, end_section=(j + 1) in starts)
    return table


def markdown_table(
    rows: Sequence[dict[str, Any]], paper: bool = True, rounding: bool = False
) -> str:
    """The same table as GitHub Markdown."""
    header, body, _ = _grid(rows, paper, rounding)
    align = [":--", ":--"] + ["--:"] * (len(header) - 2)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
    ]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines) + "\n\n" + table_caption(rows, paper, rounding) + "\n"
