"""docs/ARCHITECTURE.md is a true map: every module of the package is listed in its folder."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "luser_cli"


def folder_blocks() -> dict[str, str]:
    """The map's text per top-level entry of ``luser_cli/`` ('' = top-level modules)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    tree = text.split("```")[1]
    blocks: dict[str, str] = {"": ""}
    current = ""
    for line in tree.splitlines():
        entry = re.match(r"^  (\S+)", line)
        if entry:
            name = entry.group(1)
            current = name.rstrip("/") if name.endswith("/") else ""
            if current:
                blocks.setdefault(current, "")
        blocks[current] += line + "\n"
    return blocks


def test_every_module_is_on_the_map() -> None:
    blocks = folder_blocks()
    missing = []
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE)
        if f.name == "__init__.py" or rel.parts[0] == "presets":
            continue
        folder = rel.parts[0] if len(rel.parts) > 1 else ""
        if not re.search(rf"\b{re.escape(f.stem)}(\.py)?\b", blocks.get(folder, "")):
            missing.append(str(rel))
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {missing}"


def test_the_map_lists_no_module_that_does_not_exist() -> None:
    blocks = folder_blocks()
    for folder, text in blocks.items():
        for name in re.findall(r"(?<![/\w])([a-z_0-9]+)\.py\b", text):
            where = PACKAGE / folder if folder else PACKAGE
            found = list(where.rglob(f"{name}.py")) if folder else [where / f"{name}.py"]
            assert any(p.exists() for p in found), f"{folder}/{name}.py is on the map only"
