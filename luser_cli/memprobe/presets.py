"""Which preset the memory probe measures: the task's shipped preset or the paper's recipe, at
an image size and with a fixed-point graph layout (:func:`probe_preset`)."""

from __future__ import annotations

from typing import Any

from luser_cli.errors import ConfigError
from luser_cli.training.config import (
    Preset,
    apply_overrides,
    paper_preset_for_task,
    preset_for_task,
)

__all__ = ["RECIPES", "check_recipe", "probe_preset"]

#: Which shipped preset the probe measures: the task's own (what ``luser train`` trains) or
#: the paper's recipe (``ct-paper`` for CT; the same preset for the other tasks).
RECIPES: tuple[str, ...] = ("shipped", "paper")


def check_recipe(recipe: str) -> str:
    """``recipe`` if it is one of :data:`RECIPES`, else a one-line ``ConfigError``."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    return recipe


def probe_preset(
    task: str, image_size: int | None = None, graph: str | None = None, recipe: str = "shipped"
) -> Preset:
    """The ``recipe`` preset of ``task`` (:data:`RECIPES`), at ``image_size`` and with the
    equilibrium layers' ``solver.graph`` (``recompute`` or ``keep``) if given."""
    check_recipe(recipe)
    preset = preset_for_task(task) if recipe == "shipped" else paper_preset_for_task(task)
    overrides: dict[str, Any] = {}
    if image_size is not None and image_size != preset.image_size:
        overrides["image_size"] = int(image_size)
    if graph is not None:
        overrides["solver.graph"] = graph
    return apply_overrides(preset, overrides) if overrides else preset
