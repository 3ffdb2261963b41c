"""``luser train``: parse flags into preset overrides and run the trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from luser_cli.cli.app import app
from luser_cli.cli.flags import apply_flags, flag_option, flag_values
from luser_cli.cli.options import set_threads


@app.command()
def train(
    task: str = typer.Option(..., "--task", "-t", help="deblur, ct, mri4x or mri8x."),
    model: str = typer.Option(
        "luser-dw", "--model", "-m", help="lu-dncnn, deq4ip, luser-sw, luser-dw."
    ),
    preset: Path | None = typer.Option(
        None,
        "--preset",
        help="Your own preset TOML, or a shipped preset's name such as ct-paper (the paper's "
        "exact CT recipe); default: the task's.",
    ),
    data: str | None = flag_option(None, "data"),
    builtin: str | None = flag_option(None, "builtin"),
    random_phase: bool | None = flag_option(None, "random_phase"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default: runs/<task>-<model>-<time>)."
    ),
    steps: int | None = flag_option(None, "steps"),
    epochs: int | None = flag_option(None, "epochs"),
    batch_size: int | None = flag_option(None, "batch_size", "-b"),
    image_size: int | None = flag_option(None, "image_size"),
    lr: float | None = flag_option(None, "lr"),
    warmup_steps: int | None = flag_option(None, "warmup_steps"),
    scheduler: str | None = flag_option(None, "scheduler"),
    initial: str | None = flag_option(None, "initial"),
    data_step: str | None = flag_option(None, "data_step"),
    ray_weights: float | None = flag_option(None, "ray_weights"),
    loss: str | None = flag_option(None, "loss"),
    aux_loss: bool | None = flag_option(None, "aux_loss"),
    seed: int | None = flag_option(None, "seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Start from trained weights: 'builtin' (the model shipped with luser for the "
        "task), 'latest' (the newest run of the task) or a run folder / checkpoint file.",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its last good checkpoint, with its settings "
        "(flags given again override them).",
    ),
    save_every: int | None = flag_option(None, "save_every"),
    val_every: int | None = flag_option(None, "val_every"),
    train_size: int | None = flag_option(None, "train_size"),
    val_size: int | None = flag_option(None, "val_size"),
    fp_tol: float | None = flag_option(None, "fp_tol"),
    fp_max_iter: int | None = flag_option(None, "fp_max_iter"),
    bwd_tol: float | None = flag_option(None, "bwd_tol"),
    bwd_max_iter: int | None = flag_option(None, "bwd_max_iter"),
    backward: str | None = flag_option(None, "backward"),
    fp_graph: str | None = flag_option(None, "fp_graph"),
    jacobian_penalty: float | None = flag_option(None, "jacobian_penalty"),
    stages: int | None = flag_option(None, "stages"),
    init_gain: float | None = flag_option(None, "init_gain"),
    warm_start: bool | None = flag_option(None, "warm_start"),
    bf16: bool | None = flag_option(None, "bf16"),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads (default: this process's CPUs, shared under torchrun)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Train a model (lu-dncnn, deq4ip, luser-sw, luser-dw) for a task.

    Several processes: torchrun --nproc-per-node N -m luser_cli train ... (global --batch-size).
    SIGINT/SIGTERM save a checkpoint at the next step and exit with code 75; --resume continues.
    """
    flags = flag_values(locals())  # the preset-field flags (luser_cli.cli.flags.FLAGS)
    from luser_cli.errors import ConfigError, LuserError
    from luser_cli.models.registry import check_model_name
    from luser_cli.runs import default_run_dir
    from luser_cli.tasks import get_task
    from luser_cli.training.checkpoint import stored_preset
    from luser_cli.training.config import load_preset, preset_for_task, preset_from_dict
    from luser_cli.training.distributed import DistContext
    from luser_cli.training.loop import Trainer
    from luser_cli.training.recovery import TrainingInterrupted

    get_task(task)
    check_model_name(model)
    set_threads(threads)
    dist = DistContext.from_env(device)
    try:
        # Rank 0 picks the run folder and the base preset (a resumed run continues with the
        # settings stored in its checkpoint, so only the flags given again change anything).
        base_data: dict | None = None
        run_dir, problem = Path("."), None
        if dist.is_main:
            run_dir = out if out is not None else default_run_dir(task, model)
            try:
                if preset is not None:
                    base_data = load_preset(preset).model_dump(mode="json")
                elif resume and out is not None:
                    stored = stored_preset(out)
                    if stored is not None and stored.get("task") == task:
                        base_data = stored
            except LuserError as e:
                problem = str(e)
        shared = dist.broadcast_from_main((str(run_dir), base_data, problem))
        run_dir, base_data, problem = Path(shared[0]), shared[1], shared[2]
        if problem is not None:
            raise ConfigError(problem)
        if base_data is None:
            base = preset_for_task(task)
        else:
            base = preset_from_dict(base_data, str(preset or f"{run_dir} checkpoint preset"))
        if base.task != task:
            raise ConfigError(f"preset {preset} is for task {base.task!r}, not {task!r}")
        cfg = apply_flags(base, flags)  # --epochs alone clears a preset's step count
        summary = Trainer(
            cfg,
            model,
            run_dir,
            device=device,
            resume=resume,
            dist=dist,
            progress=progress,
            log=lambda line: typer.echo(line, err=True),
            init=init,
        ).run()
    except TrainingInterrupted as e:  # a clean stop, not an error: one line, exit code 75
        if dist.is_main:
            typer.echo(str(e), err=True)
        raise typer.Exit(e.exit_code) from None
    except LuserError as e:
        if not dist.is_main:  # rank 0 reports it; the others only exit with its code
            raise typer.Exit(e.exit_code) from None
        raise
    finally:
        dist.close()
    if dist.is_main:
        typer.echo(
            f"trained {model} on {task} for {summary['steps']} steps "
            f"({summary['seconds']:.0f} s); "
            f"best validation PSNR {summary['best_val_psnr']:.2f} dB; "
            f"run folder: {summary['out']}"
        )
