"""Typed presets: everything a training run needs, validated by pydantic.

A preset is a TOML file (``presets/<task>.toml``) with the sections below. Unknown keys and
bad values are rejected with the offending field named (``ConfigError``). Command-line flags
override fields after loading (:func:`apply_overrides`), and the resolved preset is stored in
every checkpoint so a run can be resumed, evaluated and reproduced from it alone.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from luser_cli.data.splits import BUILTIN_SIZES
from luser_cli.errors import ConfigError
from luser_cli.models.shallow_block import INIT_GAIN
from luser_cli.models.unrolled import DataStep
from luser_cli.physics import InitialEstimate, resolve_physics
from luser_cli.solvers.config import EquilibriumConfig
from luser_cli.tasks import MAX_IMAGE_SIZE, MAX_SEED, TASK_NAMES, PhysicsSettings, get_task


class _Section(BaseModel):
    """A preset section: unknown keys refused, and strict types (``batch_size = true`` or
    ``image_size = "32"`` are refused, not coerced); numbers must be finite."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


#: What ``Preset.for_model("deq4ip")`` fills in for unset DEQ4IP settings (measured in
#: ``examples/deq4ip-convergence.md``): a fixed-affine BatchNorm and this data-step anchor.
DEQ4IP_NORM = "fixed"
DEQ4IP_ANCHOR = 0.01


class ModelSettings(_Section):
    stages: int = Field(8, ge=1, le=64, description="K, the number of unrolled stages")
    initial: InitialEstimate = Field(
        "auto",
        description="initial estimate x0: auto = the paper's (y for deblur, A^T y / ||A||^2 "
        "for CT and MRI); adjoint; fbp = Hann filtered back-projection (CT only)",
    )
    data_step: DataStep = Field(
        "gradient",
        description="each stage's data-consistency step: gradient = the paper's "
        "x + step A^T(y - Ax) / ||A||^2; fbp = x + step FBP(y - Ax), preconditioned (CT only)",
    )
    ray_weight_power: float = Field(
        0.0,
        ge=0,
        le=1,
        description="p: the data step weights each ray's residual by its relative photon count "
        "exp(-mu_max y) to the p, normalised to mean 1; 0 = every ray alike (the paper's), "
        "1 = inverse noise variance (CT's post-log Poisson data only)",
    )
    deq4ip_norm: Literal["batch", "fixed"] | None = Field(
        None,
        description="DEQ4IP only: its DnCNN's BatchNorm inside the fixed point; batch = batch "
        "statistics (the original; makes the map expansive, its solves do not converge), fixed = "
        "a fixed per-channel affine map; unset = fixed for new runs (batch for checkpoints "
        "from before this setting)",
    )
    deq4ip_anchor: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="DEQ4IP only: mu of the data step's Tikhonov term -mu (x - x0), which makes "
        "the map contract on the null space of A (step clamped to [0, 2/(1+mu)]); unset = "
        f"{DEQ4IP_ANCHOR} for new runs (0 for checkpoints from before this setting)",
    )
    deq4ip_data_step: DataStep | None = Field(
        None,
        description="DEQ4IP only: the data step of its fixed-point map, in place of data_step "
        "(a preset sets it where DEQ4IP's map with data_step does not contract); unset = "
        "data_step",
    )
    warm_start: bool = Field(
        False,
        description="LUSER only: start each stage's fixed-point solve from the previous "
        "stage's solution instead of zero (where the maps contract, only the iterations change)",
    )
    init_gain: float = Field(
        INIT_GAIN,
        gt=0,
        le=1,
        description="LUSER only: starting gain of the last GroupNorm of each shallow block, "
        "which sets the scale of its first residuals and how contractive its map starts "
        "(PyTorch's default is 1; initialisation only)",
    )


class TrainSettings(_Section):
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="the optimiser's learning rate (a given --lr also replaces model_lr)",
    )
    model_lr: dict[str, float] = Field(
        default_factory=dict,
        description="learning rate per model name, replacing lr for that model; an explicit "
        "--lr replaces both",
    )
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "cosine", "wsd"] = Field(
        "cosine",
        description="learning rate after the warm-up: none = constant; cosine = cosine decay to 0 "
        "over the run; wsd = constant, then linear decay to 0 over the last decay_fraction",
    )
    decay_fraction: float = Field(
        0.3, gt=0, le=1, description="wsd: the share of the run spent decaying the lr to 0"
    )
    warmup_steps: int = Field(
        20,
        ge=0,
        description="linear learning-rate warm-up from lr / warmup_steps over these steps "
        "(Adam's first sign steps otherwise wreck the model)",
    )
    epochs: int = Field(
        50, ge=1, description="epochs over the training split (unless steps is set)"
    )
    steps: int | None = Field(
        None, ge=1, description="optimiser steps of the run; if set, overrides epochs"
    )
    batch_size: int = Field(
        4, ge=1, le=4096, description="global batch size (split over the processes)"
    )
    loss: Literal["mse", "psnr"] = Field(
        "mse",
        description="mse = the paper's mean squared error; psnr = mean over images of "
        "10 log10(MSE_i) (minus the PSNR at unit range): every image's PSNR weighs the same",
    )
    aux_loss: bool = Field(False, description="the loss on every intermediate x_k as well")
    grad_clip: float | None = Field(1.0, gt=0)
    jacobian_penalty: float = Field(
        0.0,
        ge=0,
        description="weight of the Jacobian regulariser (Bai et al. 2021) added to the loss: "
        "the Hutchinson estimate of ||J||_F^2 / n at each equilibrium's fixed point, averaged "
        "over equilibria; keeps the fixed-point maps contractive (equilibrium models; 0 = off)",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of data order, noise and weights")
    save_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = each epoch")
    val_every: int = Field(0, ge=0, description="steps between validations; 0 = each epoch")
    bf16: bool = Field(False, description="bfloat16 autocast of the networks (CUDA, or AMX CPUs)")
    max_rollbacks: int = Field(3, ge=0, description="NaN/divergence recoveries before stopping")

    @field_validator("model_lr")
    @classmethod
    def _known_models(cls, value: dict[str, float]) -> dict[str, float]:
        from luser_cli.models.registry import MODEL_NAMES

        for name, lr in value.items():
            if name not in MODEL_NAMES:
                raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
            if not 0 < lr < 1:
                raise ValueError(f"{name}: learning rate must be in (0, 1), got {lr}")
        return value


class DataSettings(_Section):
    path: str | None = Field(
        None,
        description="data folder (CelebA, LoDoPaB-CT, fastMRI, images or NIfTI volumes); "
        "built-in data when omitted",
    )
    train_size: int = Field(
        BUILTIN_SIZES["train"], ge=1, description="built-in training items per epoch"
    )
    val_size: int = Field(BUILTIN_SIZES["val"], ge=1, description="built-in validation items")
    test_size: int = Field(BUILTIN_SIZES["test"], ge=1, description="built-in test items")
    num_workers: int = Field(0, ge=0)
    builtin: Literal["auto", "ellipses", "photos", "mix", "scans", "mix-scans"] = Field(
        "auto",
        description="built-in images: auto (photo patches for deblur, ellipse phantoms otherwise), "
        "ellipses, photos (grey for CT and MRI), mix (half photos, half ellipses), scans (real MR "
        "slices bundled with nibabel and pydicom) or mix-scans (a third each of photos, MR slices "
        "and ellipses)",
    )
    random_phase: bool = Field(
        False,
        description="MRI: give half of the built-in images a smooth random phase "
        "(complex images, as fastMRI's)",
    )


class Preset(_Section):
    task: Literal["deblur", "ct", "mri4x", "mri8x"]
    image_size: int = Field(ge=8, le=MAX_IMAGE_SIZE, description="image side in pixels")
    physics: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    model: ModelSettings = ModelSettings()
    solver: EquilibriumConfig = EquilibriumConfig()
    train: TrainSettings = TrainSettings()
    data: DataSettings = DataSettings()

    @field_validator("physics")
    @classmethod
    def _physics_fits_task(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Checked against the task's own physics model; stored as a plain, complete dict.
        task = info.data.get("task")
        return value if task is None else resolve_physics(task, value).model_dump()

    @model_validator(mode="after")
    def _fbp_fits_task(self) -> Preset:
        from luser_cli.classical.methods import check_method

        if self.model.ray_weight_power and get_task(self.task).modality != "ct":
            raise ValueError(
                f"model.ray_weight_power: photon-count weights are for CT's post-log Poisson "
                f"data, not task {self.task!r}; use 0"
            )

        if "fbp" not in (self.model.initial, self.model.data_step):
            return self
        try:
            check_method("fbp", self.task)  # the one place that says which tasks have an FBP
        except ConfigError as e:
            if self.model.initial == "fbp":
                raise ValueError(f"model.initial: {e}") from None
            raise ValueError(
                f"model.data_step: fbp (filtered back-projection) is for CT, not task "
                f"{self.task!r}; use gradient"
            ) from None
        return self

    def for_model(self, model_name: str) -> Preset:
        """This preset as ``model_name`` trains it: ``train.lr`` taken from ``train.model_lr``
        when that names the model; for DEQ4IP its contractive settings of new runs and
        ``model.deq4ip_data_step`` as its data step (idempotent)."""
        out = self
        if model_name == "deq4ip":  # new runs get the contractive DEQ4IP (ModelSettings)
            m = self.model
            fill = {}
            if m.deq4ip_norm is None:
                fill["deq4ip_norm"] = DEQ4IP_NORM
            if m.deq4ip_anchor is None:
                fill["deq4ip_anchor"] = DEQ4IP_ANCHOR
            if m.deq4ip_data_step is not None and m.deq4ip_data_step != m.data_step:
                fill["data_step"] = m.deq4ip_data_step
            if fill:
                out = out.model_copy(update={"model": m.model_copy(update=fill)})
        lr = self.train.model_lr.get(model_name)
        if lr is None or lr == self.train.lr:
            return out
        return out.model_copy(update={"train": self.train.model_copy(update={"lr": lr})})

    def physics_settings(self) -> PhysicsSettings:
        """The task's typed physics settings (:data:`luser_cli.tasks.PhysicsSettings`)."""
        return resolve_physics(self.task, self.physics)


def _format_error(e: ValidationError, source: str) -> ConfigError:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return ConfigError(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")


def preset_from_dict(data: dict[str, Any], source: str = "preset") -> Preset:
    try:
        return Preset.model_validate(data)
    except ValidationError as e:
        raise _format_error(e, source) from None


PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


#: Suffix of a shipped preset that keeps the paper's exact recipe where the task's own preset
#: departs from it (``ct-paper.toml`` next to ``ct.toml``).
PAPER_SUFFIX = "-paper"


def builtin_presets() -> dict[str, Path]:
    """Preset name -> path of every shipped preset: one per task (``ct``), plus the paper's
    recipe (``ct-paper``) where the task's preset departs from the paper."""
    found = {}
    for p in sorted(PRESET_DIR.glob("*.toml")):
        if p.stem in TASK_NAMES or p.stem.removesuffix(PAPER_SUFFIX) in TASK_NAMES:
            found[p.stem] = p
    return found


#: Top-level key of a preset file naming the preset it extends (a shipped preset's name or a
#: file relative to this one); the file's own keys override the parent's, table by table.
EXTENDS = "extends"


def _preset_file(path: str | Path, relative_to: Path | None = None) -> Path:
    p = Path(path)
    if relative_to is not None and not p.is_absolute() and (relative_to / p).is_file():
        return relative_to / p
    if p.is_file():
        return p
    shipped = builtin_presets()
    if str(path) not in shipped:
        raise ConfigError(f"preset file not found: {p} (shipped presets: {', '.join(shipped)})")
    return shipped[str(path)]


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_data(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw settings of a preset file (or a shipped preset's name) with its ``extends``
    chain resolved; values not set anywhere in the chain are the code defaults."""
    p = _preset_file(path, _seen[-1].parent if _seen else None)
    if p.resolve() in _seen:
        chain = " -> ".join(str(q) for q in (*_seen, p.resolve()))
        raise ConfigError(f"{p}: presets extend each other in a circle ({chain})")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{p}: {EXTENDS} must name a preset (a name or a file)")
    return _merge(preset_data(parent, (*_seen, p.resolve())), data)


def load_preset(path: str | Path) -> Preset:
    """Load and validate a TOML preset: a file, or a shipped preset's name (``ct-paper``); a
    preset may extend another (``extends = "ct-paper"``)."""
    return preset_from_dict(preset_data(path), str(_preset_file(path)))


def paper_preset_name(task: str) -> str:
    """Name of the shipped preset with the paper's recipe for ``task`` (``ct-paper`` or the
    task's own preset where that already is the paper's)."""
    get_task(task)
    name = task + PAPER_SUFFIX
    return name if name in builtin_presets() else task


def preset_for_task(task: str) -> Preset:
    """The shipped preset of ``task`` (what ``luser train --task`` starts from)."""
    get_task(task)
    presets = builtin_presets()
    if task not in presets:
        raise ConfigError(f"no built-in preset for task {task!r} in {PRESET_DIR}")
    return load_preset(presets[task])


def paper_preset_for_task(task: str) -> Preset:
    """The paper's recipe for ``task`` (what ``luser bench`` compares with the paper's tables)."""
    return load_preset(builtin_presets()[paper_preset_name(task)])


def data_step_overrides(step: str | None) -> dict[str, Any]:
    """Overrides for an explicit data step (``--data-step``): it is the run's whatever the
    model, so it also replaces the preset's DEQ4IP data step; None changes nothing."""
    return (
        {"model.data_step": step}
        if step is None
        else {
            "model.data_step": step,
            "model.deq4ip_data_step": step,
        }
    )


def lr_overrides(lr: float | None) -> dict[str, Any]:
    """Overrides for an explicit learning rate (``--lr``): it is the run's whatever the model,
    so it also replaces the preset's per-model rates (``train.model_lr``); None changes
    nothing."""
    return {"train.lr": lr, "train.model_lr": {} if lr is not None else None}


def apply_overrides(
    preset: Preset, overrides: dict[str, Any], unset: list[str] | tuple[str, ...] = ()
) -> Preset:
    """Return a copy with dotted-key overrides applied (``{"train.lr": 1e-3}``), re-validated.

    ``None`` values are skipped so unset CLI flags leave the preset alone; keys in ``unset`` are
    set to None explicitly.
    """
    data = preset.model_dump()
    for key, value in [*overrides.items(), *((k, None) for k in unset)]:
        if value is None and key not in unset:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return preset_from_dict(data, "option")


def preset_to_toml(preset: Preset) -> str:
    """Serialise a preset back to TOML (for the run folder)."""
    lines: list[str] = []
    data = preset.model_dump()

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    def table(name: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if scalars or not name:
            if name:
                lines.append(f"\n[{name}]")
            for k, v in scalars.items():
                if v is not None:
                    lines.append(f"{k} = {value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{name}.{k}" if name else k, v)

    table("", data)
    return "\n".join(lines).lstrip() + "\n"
