"""What a bench runs: :class:`BenchSettings` (tasks, models, losses, steps, image size, batch
size, seed, output folder, memprobe mode), the documented full run (:data:`DEFAULTS`) and the
``--quick`` smoke run (:data:`QUICK`), each cell's preset, run folder and ``luser train``
command."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from luser_cli.bench.paper import LOSSES
from luser_cli.errors import ConfigError
from luser_cli.models.registry import MODEL_NAMES, check_model_name
from luser_cli.tasks import TASK_NAMES, get_task
from luser_cli.training.config import Preset, paper_preset_for_task, paper_preset_name

__all__ = [
    "DEFAULTS",
    "NO_AUX_MODELS",
    "QUICK",
    "VAL_SIZE",
    "BenchSettings",
    "cell_name",
    "replace_settings",
]

#: Models without stages have no auxiliary loss (paper Table 2 has no DEQ4IP aux column).
NO_AUX_MODELS = frozenset({"deq4ip"})
#: Built-in validation images per cell (one validation, after the last step).
VAL_SIZE = 8


@dataclass(frozen=True)
class BenchSettings:
    """What to run; the defaults are the documented full run (see ``luser bench --help``)."""

    tasks: tuple[str, ...] = TASK_NAMES
    models: tuple[str, ...] = MODEL_NAMES
    losses: tuple[str, ...] = ("final",)
    steps: int = 100
    image_size: int = 32
    batch_size: int = 4
    eval_images: int = 16
    seed: int = 0
    out: Path = Path("runs/bench")
    device: str = "cpu"
    memprobe: str = "reuse"
    memprobe_results: Path | None = None
    quick: bool = False

    def check(self) -> BenchSettings:
        """One-line errors for bad values; returns self."""
        from luser_cli.bench.memory import MEMPROBE_MODES

        if not self.tasks:
            raise ConfigError("give at least one --task")
        if not self.models:
            raise ConfigError("give at least one --model")
        for t in self.tasks:
            get_task(t)
        for m in self.models:
            check_model_name(m)
        if not self.losses:
            raise ConfigError("give at least one loss")
        for loss in self.losses:
            if loss not in LOSSES:
                raise ConfigError(f"unknown loss {loss!r}; choose final, aux or both")
        for name, value, low in (
            ("--steps", self.steps, 1),
            ("--batch-size", self.batch_size, 1),
            ("--eval-images", self.eval_images, 1),
            ("--image-size", self.image_size, 8),
        ):
            if value < low:
                raise ConfigError(f"{name} must be at least {low}, got {value}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.memprobe not in MEMPROBE_MODES:
            raise ConfigError(
                f"unknown --memprobe {self.memprobe!r}; choose one of: {', '.join(MEMPROBE_MODES)}"
            )
        return self

    def cells(self) -> list[tuple[str, str, str]]:
        """``(task, model, loss)`` in run order (DEQ4IP has no auxiliary-loss cell)."""
        return [
            (t, m, loss)
            for t in self.tasks
            for loss in self.losses
            for m in self.models
            if not (loss == "aux" and m in NO_AUX_MODELS)
        ]

    def flag_values(self, loss: str) -> dict[str, Any]:
        """The ``luser train`` flags of a cell (:data:`luser_cli.cli.flags.FLAGS` names): the
        bench's settings, the only overrides of the paper-recipe preset."""
        return {
            "image_size": self.image_size,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "aux_loss": loss == "aux",
            "val_size": VAL_SIZE,
        }

    def preset(self, task: str, loss: str) -> Preset:
        """The task's paper-recipe preset (``ct-paper`` for CT) with the bench's settings (the
        only overrides)."""
        from luser_cli.cli.flags import apply_flags

        return apply_flags(paper_preset_for_task(task), self.flag_values(loss))

    def cell_dir(self, task: str, model: str, loss: str) -> Path:
        return self.out / cell_name(task, model, loss)

    def train_command(self, task: str, model: str, loss: str) -> str:
        """The ``luser train`` command that trains the same model into the same folder."""
        from luser_cli.training.command import train_command

        return train_command(
            task,
            self.flag_values(loss),
            preset=paper_preset_name(task),
            model=model,
            out=self.cell_dir(task, model, loss),
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("out", "memprobe_results"):
            d[k] = None if d[k] is None else str(d[k])
        for k in ("tasks", "models", "losses"):
            d[k] = list(d[k])
        d["val_size"] = VAL_SIZE
        d["learning_rates"] = {t: paper_preset_for_task(t).train.lr for t in self.tasks}
        return d


#: The documented full run and the ``--quick`` smoke run.
DEFAULTS = BenchSettings()
QUICK = BenchSettings(
    tasks=("ct", "mri4x"),
    models=("lu-dncnn", "deq4ip", "luser-dw"),
    steps=8,
    image_size=24,
    batch_size=4,
    eval_images=4,
    out=Path("runs/bench-quick"),
    quick=True,
)


def cell_name(task: str, model: str, loss: str) -> str:
    """A cell's run-folder name, ``<task>-<model>-<loss>``."""
    return f"{task}-{model}-{loss}"


def replace_settings(settings: BenchSettings, **changes: Any) -> BenchSettings:
    """``dataclasses.replace`` with the tuple fields accepting any sequence."""
    for k in ("tasks", "models", "losses"):
        if k in changes and changes[k] is not None:
            changes[k] = tuple(dict.fromkeys(changes[k]))
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
