"""Fault injection for the training-failure tests (``LUSER_FAULT_INJECT``)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from luser_cli.errors import ConfigError

FAULT_ENV = "LUSER_FAULT_INJECT"  # test hook, see FaultPlan
FAULT_KINDS = ("nan", "inf-grad", "explode", "nan-weights", "kill-save", "kill-rotate")


class FaultPlan:
    """Faults to inject, for tests: ``LUSER_FAULT_INJECT="nan@3,nan@3,kill-save@5"``.

    Each ``KIND@STEP`` entry fires once, when global step ``STEP`` (1-based, as in
    ``metrics.jsonl``) is computed or saved; repeat an entry to make it fire again after a
    rollback. Kinds: ``nan`` (the loss), ``inf-grad`` (a gradient), ``explode`` (the forward
    fixed-point residual), ``nan-weights`` (the weights after the optimiser step), ``kill-save``
    (SIGKILL the process while it saves the checkpoint of that step, after the temporary file is
    written and before it is renamed into place), ``kill-rotate`` (the same, once
    ``checkpoint_prev.pt`` has been replaced by the current ``checkpoint_last.pt``).
    """

    def __init__(self, spec: str | None) -> None:
        self.pending: list[tuple[str, int]] = []
        for entry in (spec or "").replace(" ", "").split(","):
            if not entry:
                continue
            kind, _, at = entry.partition("@")
            if kind not in FAULT_KINDS or not at.isdigit():
                raise ConfigError(
                    f"{FAULT_ENV}: bad entry {entry!r}; expected KIND@STEP with KIND one of "
                    f"{', '.join(FAULT_KINDS)}"
                )
            self.pending.append((kind, int(at)))

    def take(self, kind: str, step: int) -> bool:
        """True (once per matching entry) if ``kind`` is planned at ``step``."""
        if (kind, step) in self.pending:
            self.pending.remove((kind, step))
            return True
        return False


def sigkill(_tmp: Path) -> None:
    """The fault injector's kill: SIGKILL this process (no cleanup runs)."""
    os.kill(os.getpid(), signal.SIGKILL)
