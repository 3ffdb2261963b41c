"""``luser info``: parameters, architecture and solver settings of a model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from luser_cli.cli.app import app


@app.command()
def info(
    task: str = typer.Option(..., "--task", "-t", help="deblur, ct, mri4x or mri8x."),
    model: str = typer.Option(..., "--model", "-m", help="lu-dncnn, deq4ip, luser-sw, luser-dw."),
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

    get_task(task)
    check_model_name(model)
    cfg = load_preset(preset) if preset is not None else preset_for_task(task)
    if cfg.task != task:
        raise ConfigError(f"preset {preset} is for task {cfg.task!r}, not {task!r}")
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
