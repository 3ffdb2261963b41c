"""``luser train``: parse flags into preset overrides and run the trainer."""

from __future__ import annotations

from pathlib import Path

import typer

from luser_cli.cli.app import app
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
    data: str | None = typer.Option(
        None,
        "--data",
        help="Data folder (CelebA, LoDoPaB, fastMRI, images/NIfTI); built-in data if omitted.",
    ),
    builtin: str | None = typer.Option(
        None,
        "--builtin",
        help="Built-in images when no --data: auto, ellipses, photos, mix (half each), scans "
        "(real MR slices bundled with nibabel/pydicom) or mix-scans (a third each).",
    ),
    random_phase: bool | None = typer.Option(
        None,
        "--random-phase/--no-random-phase",
        help="MRI built-in data: a smooth random phase on half of the images.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default: runs/<task>-<model>-<time>)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser steps (overrides --epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs over the training split."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", help="Global batch size."),
    image_size: int | None = typer.Option(None, "--image-size", help="Image side in pixels."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate."),
    warmup_steps: int | None = typer.Option(
        None, "--warmup-steps", help="Linear learning-rate warm-up steps (0: none)."
    ),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        help="Learning rate after the warm-up: none, cosine (decay to 0), or wsd (constant, "
        "then linear decay to 0 over the last train.decay_fraction of the steps).",
    ),
    initial: str | None = typer.Option(
        None,
        "--initial",
        help="Initial estimate: auto (the paper's), adjoint, or fbp (CT).",
    ),
    data_step: str | None = typer.Option(
        None,
        "--data-step",
        help="Data-consistency step of each stage: gradient (the paper's) or fbp "
        "(FBP-preconditioned, CT).",
    ),
    ray_weights: float | None = typer.Option(
        None,
        "--ray-weights",
        help="CT: weight each ray's residual in the data step by its relative photon count "
        "exp(-mu_max y) to this power (0: every ray alike, the paper's; ct.toml: 0.5).",
    ),
    loss: str | None = typer.Option(
        None,
        "--loss",
        help="Training loss: mse (the paper's) or psnr (mean per-image 10 log10 MSE).",
    ),
    aux_loss: bool | None = typer.Option(
        None,
        "--aux-loss/--final-loss",
        help="Loss on every stage output, or on the final output only.",
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of data order, noise and initialisation."
    ),
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
    save_every: int | None = typer.Option(
        None, "--save-every", help="Steps between checkpoints (0: each epoch)."
    ),
    val_every: int | None = typer.Option(
        None, "--val-every", help="Steps between validations (0: each epoch)."
    ),
    train_size: int | None = typer.Option(
        None, "--train-size", help="Built-in training items per epoch."
    ),
    val_size: int | None = typer.Option(None, "--val-size", help="Validation items."),
    fp_tol: float | None = typer.Option(
        None, "--fp-tol", help="Forward fixed-point tolerance (relative residual)."
    ),
    fp_max_iter: int | None = typer.Option(
        None, "--fp-max-iter", help="Forward fixed-point iteration cap."
    ),
    bwd_tol: float | None = typer.Option(None, "--bwd-tol", help="Backward fixed-point tolerance."),
    bwd_max_iter: int | None = typer.Option(
        None, "--bwd-max-iter", help="Backward fixed-point iteration cap."
    ),
    backward: str | None = typer.Option(
        None,
        "--backward",
        help="implicit (the implicit-function gradient: the gradient only where its backward "
        "solve converges, 'bwd ok' in the progress bar) or jfb (Jacobian-free, approximate).",
    ),
    fp_graph: str | None = typer.Option(
        None,
        "--fp-graph",
        help="Equilibrium layers: recompute the block in backward (least memory) or keep its graph",
    ),
    jacobian_penalty: float | None = typer.Option(
        None,
        "--jacobian-penalty",
        help="Weight of the Jacobian regulariser (||J||_F^2 at each fixed point) in the loss; "
        "keeps equilibria contractive (0: off).",
    ),
    stages: int | None = typer.Option(None, "--stages", help="K, the number of unrolled stages."),
    init_gain: float | None = typer.Option(
        None,
        "--init-gain",
        help="LUSER: starting gain of each block's last GroupNorm (initialisation only).",
    ),
    bf16: bool | None = typer.Option(
        None, "--bf16/--no-bf16", help="bfloat16 autocast (CUDA, or CPUs with AMX / AVX-512 BF16)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads (default: this process's CPUs, shared under torchrun)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Train a model (lu-dncnn, deq4ip, luser-sw, luser-dw) for a task.

    Several processes: torchrun --nproc-per-node N -m luser_cli train ... (global --batch-size).
    SIGINT/SIGTERM save a checkpoint at the next step and exit with code 75; --resume continues.
    """
    from luser_cli.errors import ConfigError, LuserError
    from luser_cli.models.registry import check_model_name
    from luser_cli.runs import default_run_dir
    from luser_cli.tasks import get_task
    from luser_cli.training.checkpoint import stored_preset
    from luser_cli.training.config import (
        apply_overrides,
        load_preset,
        lr_overrides,
        preset_for_task,
        preset_from_dict,
    )
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
        overrides = {
            "image_size": image_size,
            "train.steps": steps,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            **lr_overrides(lr),
            "train.warmup_steps": warmup_steps,
            "train.scheduler": scheduler,
            "train.aux_loss": aux_loss,
            "train.loss": loss,
            "model.initial": initial,
            "model.data_step": data_step,
            "model.ray_weight_power": ray_weights,
            "train.seed": seed,
            "train.save_every": save_every,
            "train.val_every": val_every,
            "train.bf16": bf16,
            "train.jacobian_penalty": jacobian_penalty,
            "model.init_gain": init_gain,
            "model.stages": stages,
            "data.path": data,
            "data.train_size": train_size,
            "data.builtin": builtin,
            "data.random_phase": random_phase,
            "data.val_size": val_size,
            "solver.forward.tol": fp_tol,
            "solver.forward.max_iter": fp_max_iter,
            "solver.backward.tol": bwd_tol,
            "solver.backward.max_iter": bwd_max_iter,
            "solver.backward_mode": backward,
            "solver.graph": fp_graph,
        }
        # --epochs alone must clear a step count set in the preset.
        unset = ["train.steps"] if epochs is not None and steps is None else []
        cfg = apply_overrides(base, overrides, unset=unset)
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
