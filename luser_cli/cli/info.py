"""``luser info``: parameters, architecture and solver settings of a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from luser_cli.cli.app import app


@app.command()
def info(
    task: str | None = typer.Option(
        None, "--task", "-t", help="deblur, ct, mri4x or mri8x (not with --checkpoint)."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="lu-dncnn, deq4ip, luser-sw, luser-dw (not with --checkpoint)."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="A trained run folder (or checkpoint file): describe its model, and for equilibrium "
        "models show per stage the Jacobian's spectral radius at the fixed point and the "
        "forward/backward iterations (on 2 built-in test images), and the share of training "
        "steps whose backward solve converged.",
    ),
    preset: Path | None = typer.Option(
        None, "--preset", help="Preset TOML for the solver settings."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameter count, architecture and solver settings of a model."""
    from rich.console import Console
    from rich.table import Table

    from luser_cli.errors import ConfigError
    from luser_cli.models.describe import describe_model
    from luser_cli.models.registry import check_model_name
    from luser_cli.tasks import get_task
    from luser_cli.training.config import load_preset, preset_for_task
    from luser_cli.training.step import build_training_model

    if checkpoint is not None:
        if task is not None or model is not None or preset is not None:
            raise ConfigError("--checkpoint describes a trained run: drop --task/--model/--preset")
        data = _describe_run(checkpoint)
        task, model = data["task"], data["model"]
    else:
        if task is None or model is None:
            raise ConfigError("give --task and --model (or --checkpoint RUN)")
        get_task(task)
        check_model_name(model)
        cfg = load_preset(preset) if preset is not None else preset_for_task(task)
        if cfg.task != task:
            raise ConfigError(f"preset {preset} is for task {cfg.task!r}, not {task!r}")
        cfg = cfg.for_model(model)  # as `luser train` builds it (e.g. DEQ4IP's settings)
        net = build_training_model(cfg, model, step_scale=1.0)
        data = describe_model(net, task, cfg.solver.model_dump())
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    console = Console()
    table = Table(title=f"{model} for {task}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key in (
        "description",
        "parameters",
        "stages",
        "shared_weights",
        "prox_networks",
        "prox_parameters_each",
        "data_step",
        "ray_weights",
        "batchnorm_in_fixed_point",
        "data_step_anchor",
    ):
        if key in data:
            value = (
                f"{data[key]:,}"
                if isinstance(data[key], int) and not isinstance(data[key], bool)
                else str(data[key])
            )
            table.add_row(key, value)
    for part, layers in data["architecture"].items():
        table.add_row(part, "\n".join(layers))
    apps = data["operator_applications"]
    table.add_row("A / A^T per reconstruction", f"{apps['A']} / {apps['A_adjoint']}")
    if data["solver"]:
        s = data["solver"]
        f, b = s["forward"], s["backward"]
        table.add_row(
            "fixed-point solver",
            f"forward {f['method']} tol {f['tol']:g} max {f['max_iter']} m={f['history']}\n"
            f"backward {s['backward_mode']}: {b['method']} tol {b['tol']:g} max {b['max_iter']}\n"
            f"graph for backward: {s['graph']}",
        )
    console.print(table)
    if checkpoint is not None:
        _print_run_facts(data)


def _describe_run(run: Path) -> dict:
    """``describe_model`` of a trained run, plus its equilibria probe and training facts."""
    import torch

    from luser_cli.evaluation.equilibria import probe_trained
    from luser_cli.models.describe import describe_model
    from luser_cli.runs import load_trained
    from luser_cli.training.convergence import run_backward_convergence

    trained = load_trained(run, torch.device("cpu"))
    data = describe_model(
        trained.model,
        trained.task,
        trained.preset.solver.model_dump() if trained.model.is_equilibrium() else None,
    )
    data["checkpoint"] = str(trained.path)
    data["trained_steps"] = trained.checkpoint.get("step")
    data["training_backward_convergence"] = run_backward_convergence(trained.path)
    data["equilibria"] = probe_trained(trained)
    return data


def _print_run_facts(data: dict) -> None:
    typer.echo(f"checkpoint: {data['checkpoint']} (step {data['trained_steps']})")
    print_equilibrium_facts(data)


def print_equilibrium_facts(data: dict) -> None:
    """The training steps' backward convergence (with its warning) and the per-stage
    equilibrium lines of a ``luser eval`` / ``luser info --checkpoint`` result."""
    from luser_cli.evaluation.equilibria import format_equilibria
    from luser_cli.training.convergence import convergence_warning

    conv = data.get("training_backward_convergence")
    if conv is not None:
        typer.echo(
            f"training steps whose backward solve converged: {conv['converged_step_fraction']:.0%}"
            f" ({conv['converged_steps']}/{conv['steps']})"
        )
        warning = convergence_warning(conv)
        if warning:
            typer.echo(warning, err=True)
    if data.get("equilibria"):
        for line in format_equilibria(data["equilibria"]):
            typer.echo(line)
