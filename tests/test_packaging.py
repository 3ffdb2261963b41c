"""Packaging facts users and CI rely on: the README's two Quick start commands, CI running
exactly the second one, the console script and ``python -m luser_cli``, pinned torch."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The commands in the README's Quick start code block (one per non-comment line)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "README Quick start has no code block"
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_readme_quick_start_has_exactly_two_commands():
    cmds = quick_start_commands()
    assert len(cmds) == 2, cmds
    install, test = cmds
    assert "constraints.txt" in install and "luser quickstart" in install
    assert "constraints.txt" in test and "pytest" in test


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert quick_start_commands()[1] in [line.strip() for line in ci]


def test_torch_is_pinned_to_the_tested_version():
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    assert "torch==2.13.0" in pins


def test_console_script_and_module_entry_point():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["scripts"]["luser"] == "luser_cli.cli.app:main"
    out = subprocess.run(
        [sys.executable, "-m", "luser_cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("train", "eval", "reconstruct", "memprobe", "bench", "quickstart"):
        assert command in out
