"""What a benchmark ran on and how it was started: CPU, cores, torch, threads, load, date, command.

Timings are only comparable on the same machine under the same load, so the JSON of every bench
run records these next to the numbers (load average at the start and at the end: another
process running meanwhile makes every time per step larger).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["command_line", "load_average", "machine_info", "now_iso"]


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch version and threads, Python, platform, GPU (if any), load."""
    from luser_cli.memprobe.probe import machine_info as base

    info = base()
    info.pop("load_average", None)
    info["load_average"] = load_average()
    return info


def command_line(argv: list[str] | None = None, default: str = "luser bench") -> str:
    """The command as typed (``luser bench ...``), or ``default`` plus a note when called from
    Python (the settings in the JSON then say what ran)."""
    args = sys.argv if argv is None else argv
    sub = default.split()[-1]
    named = bool(args) and os.path.basename(args[0]) in ("luser", "__main__.py", "luser_cli")
    if named and len(args) > 1 and args[1] == sub:
        return "luser " + " ".join(shlex.quote(a) for a in args[1:])
    return f"{default} (called from Python)"
