"""``metrics.jsonl``: the row schema of a run's log, its one reader and its writers.

One JSON object per line, three kinds of row:

- a **step** row (:class:`StepRow`) per optimiser step: ``step``, ``epoch``, ``loss``, ``psnr``
  (dB, :func:`luser_cli.evaluation.metrics.batch_psnr`), ``lr``, ``time_s`` and the solver
  statistics of that step (``fp_*``, ``A_calls``, ``At_calls``, ``grad_norm``, ...);
- a **validation** row (:class:`ValRow`): ``step``, ``split = "val"``, ``val_psnr``,
  ``val_ssim`` (dB / unitless, the field's conventions);
- an **event** row (:class:`EventRow`): ``step``, ``event`` (``rollback`` / ``failed``),
  ``failed_step``, ``reason`` and, for rollbacks, ``lr_scale``, ``rollbacks``.

Every consumer (the trainer, the training curve, ``luser bench``, the convergence summary)
classifies rows with :func:`row_kind` and reads them with :func:`read_rows`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypedDict

from luser_cli.io.atomic import atomic_write, disk_full_error, disk_full_reason

RowKind = Literal["step", "val", "event", "other"]


class StepRow(TypedDict, total=False):
    step: int
    epoch: int
    loss: float
    psnr: float
    lr: float
    time_s: float


class ValRow(TypedDict):
    step: int
    split: Literal["val"]
    val_psnr: float
    val_ssim: float


class EventRow(TypedDict, total=False):
    step: int
    event: Literal["rollback", "failed"]
    failed_step: int
    reason: str
    lr_scale: float
    rollbacks: int


def row_kind(row: dict[str, Any]) -> RowKind:
    """Which of the three kinds ``row`` is (``other`` for anything unknown, e.g. a future
    kind that an older reader should skip)."""
    if "event" in row:
        return "event"
    if row.get("split") == "val":
        return "val"
    if "step" in row:
        return "step"
    return "other"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of ``metrics.jsonl`` in order (a line cut off by a kill is skipped;
    [] when there is no file)."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def rows_of(rows: list[dict[str, Any]], kind: RowKind) -> list[dict[str, Any]]:
    """The rows of one kind, in order."""
    return [r for r in rows if row_kind(r) == kind]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row; a full disk is one :class:`~luser_cli.errors.OutputError` line (a torn
    row is dropped by the next :func:`truncate_rows`)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as e:
        if disk_full_reason(e) is None:
            raise
        raise disk_full_error(path, e) from None


def truncate_rows(path: Path, rows: int | None, step: int) -> int:
    """Keep the first ``rows`` complete rows (those a checkpoint covers; without that count,
    the step and validation rows up to ``step``), rewritten atomically; returns how many rows
    were kept. Rows logged after a checkpoint are redone on resume or rollback."""
    if not path.exists():
        return 0
    kept = read_rows(path)
    if rows is not None:
        kept = kept[:rows]
    else:
        kept = [r for r in kept if r.get("step", 0) <= step and row_kind(r) != "event"]
    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return len(kept)


class MetricsLog:
    """A run's ``metrics.jsonl`` as the trainer keeps it: every rank counts the rows (the count
    goes into checkpoints, so a resume or rollback drops exactly the rows logged after them);
    only the rank that ``writes`` touches the file."""

    def __init__(self, path: Path, writes: bool) -> None:
        self.path = path
        self.writes = writes
        self.rows = 0

    def append(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if self.writes:
            append_row(self.path, row)

    def truncate(self, rows: int | None, step: int) -> None:
        """Keep the rows a checkpoint covers (:func:`truncate_rows`)."""
        if self.writes:
            self.rows = truncate_rows(self.path, rows, step)
        else:
            self.rows = int(rows or 0)

    def start_new(self) -> None:
        """A new run: no rows yet."""
        if self.writes:
            self.path.unlink(missing_ok=True)
        self.rows = 0

    def read(self) -> list[dict[str, Any]]:
        return read_rows(self.path)
