"""What a benchmark ran on and how it was started: CPU, cores, torch, threads, load, date, command.

Timings are only comparable on the same machine under the same load, so the JSON of every bench
run records these next to the numbers (load average at the start and at the end: another
process running meanwhile makes every time per step larger). ``luser memprobe`` records the
same :func:`machine_info`.
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
    """CPU model, cores, torch threads, Python / torch versions, platform, GPU (if any) and the
    1/5/15-minute ``load_average`` (None where the OS has none), in that order. The one
    machine description of ``luser bench`` and ``luser memprobe``."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
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
