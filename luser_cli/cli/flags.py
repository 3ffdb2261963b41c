"""The one table of the flags that override preset fields (``luser train``, ``quickstart``,
``bench``, ``memprobe``, and the printed ``luser train`` command lines).

Each :class:`PresetFlag` names its command-line flag, the dotted preset field it sets and,
through that field, its help text: the field's pydantic ``description`` (joined with the
descriptions of the sections above it, such as ``solver.forward``). Commands declare their Typer
options with :func:`flag_option` and turn the values they received into a preset with
:func:`apply_flags`; :func:`flag_args` prints them back (:mod:`luser_cli.training.command`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from luser_cli.training.config import Preset

__all__ = [
    "FLAGS",
    "PresetFlag",
    "apply_flags",
    "field_description",
    "flag_args",
    "flag_help",
    "flag_option",
    "flag_values",
    "overrides_from",
]


@dataclass(frozen=True)
class PresetFlag:
    """``--name`` (``--name/--no-name`` for a switch) that sets the preset field ``key``."""

    name: str
    key: str
    #: The switch's off form (``--final-loss`` for ``--aux-loss``); None for valued flags.
    off: str | None = None
    #: Set to None when this flag is given and the flag that sets it is not (``--epochs``
    #: clears a preset's ``train.steps``).
    clears: str | None = None
    #: The overrides a given value stands for, when more than ``{key: value}`` (``--lr``).
    expand: Callable[[Any], dict[str, Any]] | None = None

    @property
    def decls(self) -> tuple[str, ...]:
        """Typer parameter declarations (``"--aux-loss/--final-loss"``)."""
        return (f"{self.name}/{self.off}",) if self.off else (self.name,)

    @property
    def help(self) -> str:
        return field_description(self.key)

    def overrides(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        return self.expand(value) if self.expand is not None else {self.key: value}

    def args(self, value: Any) -> list[str]:
        """The command-line words for ``value`` (none for None)."""
        if value is None:
            return []
        if self.off is not None:
            return [self.name if value else self.off]
        return [self.name, _word(value)]


def _data_step(value: str) -> dict[str, Any]:
    from luser_cli.training.config import data_step_overrides

    return data_step_overrides(value)


def _lr(value: float) -> dict[str, Any]:
    from luser_cli.training.config import lr_overrides

    return lr_overrides(value)


#: Typer parameter name -> flag, in the order of ``luser train --help``.
FLAGS: dict[str, PresetFlag] = {
    f.name.removeprefix("--").replace("-", "_"): f
    for f in (
        PresetFlag("--data", "data.path"),
        PresetFlag("--builtin", "data.builtin"),
        PresetFlag("--random-phase", "data.random_phase", off="--no-random-phase"),
        PresetFlag("--steps", "train.steps"),
        PresetFlag("--epochs", "train.epochs", clears="train.steps"),
        PresetFlag("--batch-size", "train.batch_size"),
        PresetFlag("--image-size", "image_size"),
        PresetFlag("--lr", "train.lr", expand=_lr),
        PresetFlag("--warmup-steps", "train.warmup_steps"),
        PresetFlag("--scheduler", "train.scheduler"),
        PresetFlag("--initial", "model.initial"),
        PresetFlag("--data-step", "model.data_step", expand=_data_step),
        PresetFlag("--ray-weights", "model.ray_weight_power"),
        PresetFlag("--loss", "train.loss"),
        PresetFlag("--aux-loss", "train.aux_loss", off="--final-loss"),
        PresetFlag("--seed", "train.seed"),
        PresetFlag("--save-every", "train.save_every"),
        PresetFlag("--val-every", "train.val_every"),
        PresetFlag("--train-size", "data.train_size"),
        PresetFlag("--val-size", "data.val_size"),
        PresetFlag("--fp-tol", "solver.forward.tol"),
        PresetFlag("--fp-max-iter", "solver.forward.max_iter"),
        PresetFlag("--bwd-tol", "solver.backward.tol"),
        PresetFlag("--bwd-max-iter", "solver.backward.max_iter"),
        PresetFlag("--backward", "solver.backward_mode"),
        PresetFlag("--fp-graph", "solver.graph"),
        PresetFlag("--jacobian-penalty", "train.jacobian_penalty"),
        PresetFlag("--stages", "model.stages"),
        PresetFlag("--init-gain", "model.init_gain"),
        PresetFlag("--warm-start", "model.warm_start", off="--cold-start"),
        PresetFlag("--bf16", "train.bf16", off="--no-bf16"),
    )
}


def field_description(key: str) -> str:
    """The description of the preset field ``key`` (``"solver.forward.tol"``), prefixed by
    those of the sections on its path that have one (``"forward solve: ..."``)."""
    from luser_cli.training.config import Preset

    model: type[BaseModel] = Preset
    parts: list[str] = []
    for name in key.split("."):
        info = model.model_fields[name]  # KeyError: no such field
        if info.description:
            parts.append(info.description)
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            model = info.annotation
    if not parts:
        raise ValueError(f"preset field {key} has no description")
    return ": ".join(parts)


def flag_help(name: str, note: str | None = None) -> str:
    """The help text of ``FLAGS[name]``, with a command's ``note`` (its default) appended."""
    text = FLAGS[name].help
    return f"{text} ({note})" if note else text


def flag_option(default: Any, name: str, *aliases: str, note: str | None = None) -> Any:
    """``typer.Option`` for ``FLAGS[name]``: its declarations (plus short ``aliases``) and help."""
    import typer

    return typer.Option(default, *FLAGS[name].decls, *aliases, help=flag_help(name, note))


def flag_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """The table's entries of a command's parameters (``locals()`` or click ``ctx.params``)."""
    return {k: v for k, v in params.items() if k in FLAGS}


def overrides_from(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(overrides, unset)`` for :func:`~luser_cli.training.config.apply_overrides` from flag
    values (None: not given)."""
    unknown = set(values) - set(FLAGS)
    if unknown:
        raise KeyError(f"not preset flags: {', '.join(sorted(unknown))}")
    overrides: dict[str, Any] = {}
    unset: list[str] = []
    given = {FLAGS[k].key for k, v in values.items() if v is not None}
    for k, v in values.items():
        flag = FLAGS[k]
        overrides.update(flag.overrides(v))
        if v is not None and flag.clears is not None and flag.clears not in given:
            unset.append(flag.clears)
    return overrides, unset


def apply_flags(preset: Preset, values: Mapping[str, Any]) -> Preset:
    """``preset`` with the flag ``values`` applied (re-validated; None values change nothing)."""
    from luser_cli.training.config import apply_overrides

    overrides, unset = overrides_from(values)
    return apply_overrides(preset, overrides, unset=unset)


def flag_args(values: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> list[str]:
    """The command-line words of flag ``values``, in their order (None values left out)."""
    items = values.items() if isinstance(values, Mapping) else values
    out: list[str] = []
    for k, v in items:
        out += FLAGS[k].args(v)
    return out


def _word(value: Any) -> str:
    """A value as a command-line word: floats as ``%g`` where that reads back exactly."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)
