"""CPU threading defaults chosen at start-up (issue 19, part 1): ``luser_cli.runtime``.

The rules are checked on the pure :func:`plan_threads`; the start-up path itself in fresh
``python -m luser_cli`` processes (the OpenMP runtime reads ``OMP_WAIT_POLICY`` only when torch
loads it), reading back what torch and OpenMP ended up with (``LUSER_THREADS_DEBUG`` and
libgomp's ``OMP_DISPLAY_ENV``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from luser_cli import runtime
from luser_cli.runtime import plan_threads

CLEAN = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE")
CPUS4 = {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("argv", "env", "kwargs", "threads", "source"),
    [
        ([], {}, {}, 4, "affinity"),
        ([], {}, {"physical": 2}, 2, "affinity"),  # SMT siblings counted once
        (["train", "--threads", "3"], {"OMP_NUM_THREADS": "2"}, {}, 3, "--threads"),
        (["train", "--threads=1"], {}, {}, 1, "--threads"),
        (["train", "--threads", "0"], {}, {}, 4, "affinity"),  # invalid: the command refuses it
        ([], {"OMP_NUM_THREADS": "3"}, {}, None, "OMP_NUM_THREADS"),
        ([], {"MKL_NUM_THREADS": "3"}, {}, None, "MKL_NUM_THREADS"),
        ([], {"LOCAL_WORLD_SIZE": "2"}, {}, 2, "affinity/torchrun"),
        ([], {"LOCAL_WORLD_SIZE": "8"}, {}, 1, "affinity/torchrun"),
        # torchrun's own OMP_NUM_THREADS=1 (absent from the launcher's environment): divided.
        (
            [],
            {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
            {"launcher_set_omp": False},
            2,
            "affinity/torchrun",
        ),
        # ... but the user's own 1, or where the launcher's environment is unknown: respected.
        (
            [],
            {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
            {"launcher_set_omp": True},
            None,
            "OMP_NUM_THREADS",
        ),
        ([], {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, {}, None, "OMP_NUM_THREADS"),
        # A worker the launcher bound to fewer CPUs (numa binding) uses its own, undivided.
        ([], {"LOCAL_WORLD_SIZE": "2"}, {"launcher_cpus": set(range(8))}, 4, "affinity"),
    ],
)
def test_plan_threads_rules(argv, env, kwargs, threads, source) -> None:
    plan = plan_threads(argv, env, CPUS4, **kwargs)
    assert (plan.threads, plan.source) == (threads, source)
    assert plan.cpus == 4


def test_wait_policy_passive_unless_the_user_set_one() -> None:
    plan = plan_threads([], {}, CPUS4)
    assert (plan.wait_policy, plan.wait_policy_source) == ("PASSIVE", "luser")
    plan = plan_threads([], {"OMP_WAIT_POLICY": "active"}, CPUS4)
    assert (plan.wait_policy, plan.wait_policy_source) == ("active", "user")


def test_nothing_changes_when_torch_is_already_imported(monkeypatch) -> None:
    import torch

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    before = torch.get_num_threads()
    assert runtime.configure_process(["info"]) is None
    assert "OMP_WAIT_POLICY" not in os.environ
    assert torch.get_num_threads() == before


def _startup(args: list[str], env: dict[str, str] | None = None, **popen) -> tuple[dict, str]:
    """Start ``python -m luser_cli ARGS``; returns (luser's debug JSON line, stderr)."""
    base = {k: v for k, v in os.environ.items() if k not in CLEAN}
    base.update(env or {}, LUSER_THREADS_DEBUG="1", OMP_DISPLAY_ENV="TRUE")
    proc = subprocess.run(
        [sys.executable, "-m", "luser_cli", *args],
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
        **popen,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith('{"luser_threads"')]
    assert len(lines) == 1, proc.stderr
    return lines[0], proc.stderr


def _omp_display(stderr: str, name: str) -> str | None:
    """The value libgomp reports for ``name`` under ``OMP_DISPLAY_ENV`` (None: not libgomp)."""
    for line in stderr.splitlines():
        if line.strip().startswith(f"{name} ="):
            return line.split("=", 1)[1].strip().strip("'")
    return None


def _expected_default() -> int:
    cpus = runtime.available_cpus()
    return runtime._physical_cores(cpus) if cpus else (os.cpu_count() or 1)


def test_startup_defaults_in_a_fresh_process() -> None:
    line, err = _startup(["presets"])
    plan = line["luser_threads"]
    assert plan["source"] == "affinity"
    assert line["torch_threads"] == _expected_default()
    assert plan["wait_policy"] == "PASSIVE"
    shown = _omp_display(err, "OMP_WAIT_POLICY")
    assert shown in (None, "PASSIVE")  # libgomp read luser's setting before torch started it


def test_startup_respects_the_users_environment() -> None:
    line, err = _startup(["presets"], {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"})
    assert line["luser_threads"]["source"] == "OMP_NUM_THREADS"
    assert line["luser_threads"]["wait_policy_source"] == "user"
    assert line["torch_threads"] == 1
    assert _omp_display(err, "OMP_WAIT_POLICY") in (None, "ACTIVE")


def test_startup_threads_option_wins() -> None:
    line, _ = _startup(["train", "--threads", "1", "--help"], {"OMP_NUM_THREADS": "2"})
    assert (line["luser_threads"]["source"], line["torch_threads"]) == ("--threads", 1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_startup_uses_the_affinity_mask() -> None:
    one = min(os.sched_getaffinity(0))
    line, _ = _startup(["presets"], preexec_fn=lambda: os.sched_setaffinity(0, {one}))
    assert line["luser_threads"]["cpus"] == 1
    assert line["torch_threads"] == 1


def test_startup_divides_between_local_processes() -> None:
    line, _ = _startup(["presets"], {"LOCAL_WORLD_SIZE": "2"})
    assert line["luser_threads"]["source"] == "affinity/torchrun"
    assert line["torch_threads"] == max(1, _expected_default() // 2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc of the launcher")
def test_torchrun_workers_share_the_cpus() -> None:
    """Under a real ``torchrun`` (which sets OMP_NUM_THREADS=1 itself) each of 2 workers gets
    half the CPUs."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env["LUSER_THREADS_DEBUG"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "luser_cli", "presets"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    found = [x for x in proc.stderr.splitlines() if "luser_threads" in x]
    lines = [json.loads(x[x.index("{") :]) for x in found]
    assert len(lines) == 2, proc.stderr
    for line in lines:
        assert line["luser_threads"]["source"] == "affinity/torchrun"
        assert line["luser_threads"]["local_processes"] == 2
        assert line["torch_threads"] == max(1, _expected_default() // 2)
