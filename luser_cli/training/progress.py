"""Rich progress bar for training: loss, PSNR, fixed-point iterations, non-convergence, the
share of steps whose implicit backward solve converged (``bwd ok``), ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    def __init__(self, total: int, start: int = 0, enabled: bool = True) -> None:
        self.enabled = enabled
        self.val = ""
        #: Steps so far whose backward solves all converged: ``{"steps", "converged_steps"}``
        #: (:func:`luser_cli.training.convergence.backward_convergence` of a resumed run's rows).
        self.backward: dict[str, Any] | None = None
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self) -> TrainingProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def update(
        self, step: int, loss: float, psnr: float, stats: dict[str, float], nonconverged: int
    ) -> None:
        info = f"loss {loss:.3e}  psnr {psnr:5.2f}"
        if "fp_forward_iters" in stats:
            info += f"  fp fwd {stats['fp_forward_iters']:.1f}"
            if "fp_backward_iters" in stats:
                info += f" bwd {stats['fp_backward_iters']:.1f}"
            if nonconverged:
                info += f"  [yellow]not converged {nonconverged}[/]"
        ok = stats.get("fp_backward_converged")
        if ok is not None:
            b = dict(self.backward or {"steps": 0, "converged_steps": 0})
            b["steps"] += 1
            b["converged_steps"] += int(ok >= 1.0)
            self.backward = b
            share = b["converged_steps"] / b["steps"]
            style = "yellow" if share < 0.5 else "default"
            info += f"  [{style}]bwd ok {share:.0%}[/]"
        if self.val:
            info += f"  {self.val}"
        self._progress.update(self._task, completed=step, info=info)

    def note_validation(self, val: dict[str, float]) -> None:
        self.val = f"val {val['val_psnr']:.2f} dB"
