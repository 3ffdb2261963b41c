"""The one flag table (:mod:`luser_cli.cli.flags`): every preset flag of ``luser train`` maps to
a preset field and takes that field's description as its help; quickstart, bench and memprobe
declare the same flags; printed ``luser train`` command lines read back into the same preset."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from luser_cli.bench.settings import DEFAULTS, QUICK
from luser_cli.cli.app import app
from luser_cli.cli.flags import FLAGS, apply_flags, field_description, flag_values
from luser_cli.quickstart import QuickstartSettings
from luser_cli.training.command import train_args
from luser_cli.training.config import Preset, load_preset, preset_for_task

#: ``luser train`` options that are not preset fields (the run, not its settings).
RUN_OPTIONS = {"task", "model", "preset", "out", "device", "init", "resume", "threads", "progress"}


def command(name: str) -> Any:
    from luser_cli.cli import commands  # noqa: F401  (registers the commands)

    return typer.main.get_command(app).commands[name]


def options(name: str) -> dict[str, Any]:
    return {p.name: p for p in command(name).params}


def leaf_field(key: str) -> Any:
    """The pydantic field of a dotted preset key (KeyError if there is none)."""
    model: Any = Preset
    info = None
    for part in key.split("."):
        info = model.model_fields[part]
        model = info.annotation
    return info


def test_every_train_option_is_a_preset_flag_or_a_run_option() -> None:
    names = set(options("train"))
    assert names - RUN_OPTIONS == set(FLAGS), "a preset flag bypasses the table (or is missing)"


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_train_flag_maps_to_a_preset_field_and_shows_its_description(name: str) -> None:
    flag = FLAGS[name]
    field = leaf_field(flag.key)
    assert field.description, f"{flag.key} has no description"
    param = options("train")[name]
    assert param.help == field_description(flag.key)
    assert param.help.endswith(field.description)
    assert not re.search(r"\d\s*dB\b", param.help), "measured dB values go stale"
    assert flag.name in param.opts
    if flag.off is not None:
        assert flag.off in param.secondary_opts


def test_nested_solver_flags_name_their_solve() -> None:
    assert field_description("solver.forward.tol").startswith("forward")
    assert field_description("solver.backward.tol").startswith("backward")
    assert field_description("solver.forward.tol") != field_description("solver.backward.tol")


@pytest.mark.parametrize("cmd", ["quickstart", "bench", "memprobe"])
def test_other_commands_declare_the_tables_flags(cmd: str) -> None:
    shared = {n: p for n, p in options(cmd).items() if n in FLAGS}
    assert shared, cmd
    for name, param in shared.items():
        assert FLAGS[name].name in param.opts
        assert param.help.startswith(FLAGS[name].help), (cmd, name)


def test_flags_reach_the_same_fields_as_before() -> None:
    base = preset_for_task("ct")
    got = apply_flags(base, {"fp_tol": 0.02, "bwd_max_iter": 7, "jacobian_penalty": 0.1})
    assert got.solver.forward.tol == 0.02 and got.solver.backward.max_iter == 7
    assert got.solver.backward.tol == base.solver.backward.tol
    assert got.train.jacobian_penalty == 0.1
    assert apply_flags(base, {"lr": 2e-3}).train.model_lr == {}  # --lr replaces per-model rates
    assert apply_flags(base, {name: None for name in FLAGS}) == base


def test_epochs_alone_clears_a_preset_step_count() -> None:
    base = apply_flags(preset_for_task("mri4x"), {"steps": 9})
    assert apply_flags(base, {"epochs": 2}).train.steps is None
    both = apply_flags(base, {"epochs": 2, "steps": 5})
    assert (both.train.epochs, both.train.steps) == (2, 5)


# -- printed command lines read back --------------------------------------------------------------
def parse_train(args: list[str]) -> Preset:
    """What ``luser train`` would train with for this printed command line."""
    assert args[:2] == ["luser", "train"]
    ctx = command("train").make_context("train", args[2:])
    params = ctx.params
    base = load_preset(params["preset"]) if params["preset"] else preset_for_task(params["task"])
    return apply_flags(base, flag_values(params))


#: A value for every flag, none of them a preset's (CT, which takes --ray-weights).
EVERY_FLAG: dict[str, Any] = {
    "data": "some/folder",
    "builtin": "mix",
    "random_phase": False,
    "steps": 7,
    "epochs": 3,
    "batch_size": 3,
    "image_size": 24,
    "lr": 0.0012345678901,  # not exact as %g: printed in full
    "warmup_steps": 0,
    "scheduler": "none",
    "initial": "adjoint",
    "data_step": "gradient",
    "ray_weights": 0.25,
    "loss": "mse",
    "aux_loss": True,
    "seed": 5,
    "save_every": 2,
    "val_every": 3,
    "train_size": 9,
    "val_size": 4,
    "fp_tol": 0.02,
    "fp_max_iter": 11,
    "bwd_tol": 0.03,
    "bwd_max_iter": 12,
    "backward": "jfb",
    "fp_graph": "keep",
    "jacobian_penalty": 0.1,
    "stages": 3,
    "init_gain": 0.5,
    "warm_start": True,
    "bf16": True,
}


def test_every_flag_round_trips_through_the_printed_command() -> None:
    assert set(EVERY_FLAG) == set(FLAGS)
    expected = apply_flags(preset_for_task("ct"), EVERY_FLAG)
    assert parse_train(train_args("ct", EVERY_FLAG, model="luser-dw")) == expected
    off = {**EVERY_FLAG, "aux_loss": False, "bf16": False, "random_phase": True}
    line = train_args("ct", off)
    assert {"--final-loss", "--no-bf16", "--random-phase"} <= set(line)
    assert parse_train(line) == apply_flags(preset_for_task("ct"), off)


@pytest.mark.parametrize(
    "settings",
    [
        QuickstartSettings(),
        QuickstartSettings(task="deblur", tol=None),
        QuickstartSettings(task="mri4x", model="deq4ip", lr=5e-4, initial="adjoint"),
    ],
    ids=["readme", "deblur", "mri-lr"],
)
def test_quickstart_command_line_trains_the_quickstart_preset(settings: QuickstartSettings) -> None:
    args = settings.train_args(Path("runs/q/run"))
    assert parse_train(args) == settings.preset()
    assert args[args.index("--model") + 1] == settings.model


@pytest.mark.parametrize("settings", [DEFAULTS, QUICK], ids=["full", "quick"])
def test_bench_command_lines_train_the_cells_presets(settings: Any) -> None:
    for task in settings.tasks:
        for loss in ("final", "aux"):
            line = settings.train_command(task, "luser-dw", loss)
            assert parse_train(shlex.split(line)) == settings.preset(task, loss)
