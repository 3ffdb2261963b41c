"""CPU threading defaults, chosen when luser starts a process (before torch is imported).

Why: on a busy machine (a laptop, a shared server, a CI runner, several ``torchrun`` processes on
one host) OpenMP's default wait policy lets idle worker threads *spin*; a spinning thread loses
its core to the other processes, and every parallel region then waits for a descheduled thread.
Measured on 2 cores next to one busy process: 20 training steps took 83-487 s with the default,
22 s with ``OMP_WAIT_POLICY=PASSIVE`` and 19 s with one thread (issue 19). And torch's default
thread count is the machine's physical cores, not the CPUs this process may run on (a
``taskset`` / cgroup cpuset / container limit), nor its share of them under ``torchrun``.

What luser does when its CLI starts a process (:func:`configure_process`, called by
``luser_cli.cli.app.main`` before any torch import):

* ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets ``OMP_WAIT_POLICY`` (the
  OpenMP runtime reads it once, when torch loads it, so it must be set before ``import torch``);
* intra-op threads (``torch.set_num_threads``, :func:`apply_threads`): ``--threads N`` if given
  (the command sets it), else ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` if set (torch reads
  those itself), else the CPUs in this process's affinity mask (``os.sched_getaffinity``;
  physical cores where sysfs tells SMT siblings apart, as torch's own default counts), divided
  between the ``LOCAL_WORLD_SIZE`` processes that ``torchrun`` starts on this host (at least 1
  each). ``torchrun`` itself sets ``OMP_NUM_THREADS=1`` for its workers when the user did not
  set it; luser recognises that (the launcher's own environment, ``/proc/<ppid>/environ``, has
  no ``OMP_NUM_THREADS``) and divides the CPUs instead. A worker whose affinity is already
  narrower than its launcher's (``torchrun --numa-binding``, ``numactl``) uses its own CPUs
  undivided.

When torch is already imported (luser called from Python, e.g. the test suite), nothing is
changed: the embedding program owns its threads. ``LUSER_THREADS_DEBUG=1`` prints the decision
and torch's resulting thread count on stderr (one JSON line).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "ThreadPlan",
    "apply_threads",
    "available_cpus",
    "configure_process",
    "current_plan",
    "plan_threads",
]

#: Environment variables through which a user sets the intra-op thread count (torch reads both).
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPlan:
    """What luser chose for this process, and why.

    ``threads`` is the intra-op thread count luser sets (None: left to torch, which then reads
    the user's ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``); ``source`` says where the count comes
    from: ``--threads``, ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (the user's), ``affinity``,
    or ``affinity/torchrun`` (divided between the local processes).
    """

    threads: int | None
    source: str
    cpus: int
    local_processes: int
    wait_policy: str
    wait_policy_source: str  # "user" (the environment's) or "luser" (the default set here)

    def as_dict(self) -> dict:
        return asdict(self)


def _physical_cores(cpus: set[int], sysfs: str = "/sys/devices/system/cpu") -> int:
    """Distinct physical cores among logical ``cpus`` (SMT siblings counted once); the number of
    logical CPUs where sysfs does not say."""
    cores = set()
    try:
        for cpu in cpus:
            base = f"{sysfs}/cpu{cpu}/topology"
            with open(f"{base}/physical_package_id") as f:
                package = f.read().strip()
            with open(f"{base}/core_id") as f:
                core = f.read().strip()
            cores.add((package, core))
    except OSError:
        return len(cpus)
    return max(1, len(cores))


def available_cpus(pid: int = 0) -> set[int] | None:
    """The logical CPUs process ``pid`` (0: this one) may run on; None where the OS cannot say."""
    try:
        return set(os.sched_getaffinity(pid))
    except (AttributeError, OSError):
        return None


def _launcher_set(var: str, ppid: int) -> bool | None:
    """Whether ``var`` was in the launcher's (the parent's) environment when it started; None
    where that cannot be read."""
    try:
        with open(f"/proc/{ppid}/environ", "rb") as f:
            names = {item.split(b"=", 1)[0] for item in f.read().split(b"\0") if item}
    except OSError:
        return None
    return var.encode() in names


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if value >= 1 else None


def threads_from_argv(argv: Sequence[str]) -> int | None:
    """The value of ``--threads N`` / ``--threads=N`` in ``argv`` (None if absent or invalid:
    the command itself validates it and reports a bad value)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--threads" and i + 1 < len(argv):
            return _positive_int(argv[i + 1])
        if arg.startswith("--threads="):
            return _positive_int(arg.split("=", 1)[1])
    return None


def plan_threads(
    argv: Sequence[str],
    environ: Mapping[str, str],
    cpus: set[int] | None,
    physical: int | None = None,
    launcher_cpus: set[int] | None = None,
    launcher_set_omp: bool | None = None,
) -> ThreadPlan:
    """The thread settings for a process started with ``argv`` in ``environ`` (pure function).

    ``cpus``: this process's affinity (None: unknown, ``os.cpu_count()`` is used); ``physical``:
    physical cores among them (default ``len(cpus)``); ``launcher_cpus``: the parent's affinity
    (None: unknown); ``launcher_set_omp``: whether ``OMP_NUM_THREADS`` was in the parent's own
    environment (None: unknown). See the module docstring for the rules.
    """
    user_policy = environ.get("OMP_WAIT_POLICY")
    policy, policy_source = (user_policy, "user") if user_policy else ("PASSIVE", "luser")
    n_cpus = len(cpus) if cpus else (os.cpu_count() or 1)
    usable = physical if physical else n_cpus
    local = _positive_int(environ.get("LOCAL_WORLD_SIZE")) or 1
    common = {
        "cpus": n_cpus,
        "local_processes": local,
        "wait_policy": policy,
        "wait_policy_source": policy_source,
    }
    explicit = threads_from_argv(argv)
    if explicit is not None:
        return ThreadPlan(threads=explicit, source="--threads", **common)
    torchrun_default = (
        local > 1
        and environ.get("OMP_NUM_THREADS", "").strip() == "1"
        and "MKL_NUM_THREADS" not in environ
        and launcher_set_omp is False
    )
    if not torchrun_default:
        for var in THREAD_VARS:
            if environ.get(var, "").strip():
                return ThreadPlan(threads=None, source=var, **common)
    bound = cpus is not None and launcher_cpus is not None and cpus < launcher_cpus
    if local > 1 and not bound:
        return ThreadPlan(threads=max(1, usable // local), source="affinity/torchrun", **common)
    return ThreadPlan(threads=max(1, usable), source="affinity", **common)


_PLAN: ThreadPlan | None = None


def current_plan() -> ThreadPlan | None:
    """The plan :func:`configure_process` chose for this process (None if it did not run)."""
    return _PLAN


def configure_process(argv: Sequence[str] | None = None) -> ThreadPlan | None:
    """Choose this process's thread settings and set ``OMP_WAIT_POLICY`` (module docstring).

    Must run before ``import torch``; when torch is already imported it changes nothing and
    returns None. ``argv``: the command's arguments (default ``sys.argv[1:]``).
    """
    global _PLAN
    if "torch" in sys.modules:
        return None
    args = list(sys.argv[1:] if argv is None else argv)
    cpus = available_cpus()
    ppid = os.getppid()
    local = _positive_int(os.environ.get("LOCAL_WORLD_SIZE")) or 1
    plan = plan_threads(
        args,
        os.environ,
        cpus,
        physical=_physical_cores(cpus) if cpus else None,
        launcher_cpus=available_cpus(ppid) if local > 1 else None,
        launcher_set_omp=_launcher_set("OMP_NUM_THREADS", ppid) if local > 1 else None,
    )
    if plan.wait_policy_source == "luser":
        os.environ["OMP_WAIT_POLICY"] = plan.wait_policy
    _PLAN = plan
    return plan


def apply_threads(plan: ThreadPlan | None = None) -> None:
    """Set torch's intra-op threads to the plan's count (after ``import torch``); a plan that
    leaves them to the user's environment, or no plan, changes nothing. With
    ``LUSER_THREADS_DEBUG`` set, prints the plan and torch's resulting thread count as one JSON
    line on stderr."""
    plan = plan if plan is not None else _PLAN
    if plan is None:
        return
    import torch

    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    if os.environ.get("LUSER_THREADS_DEBUG"):
        line = {"luser_threads": plan.as_dict(), "torch_threads": torch.get_num_threads()}
        print(json.dumps(line), file=sys.stderr)
