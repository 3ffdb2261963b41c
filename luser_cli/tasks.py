"""The four tasks: what the images are, which operator and noise make the measurements.

A task fixes the channel count (3 for RGB deblurring, 1 for CT, 2 = real/imag for MRI), the
physics (operator + noise, configured by a typed :mod:`pydantic` model), the initial estimate
(``y`` for deblurring, ``A^T y`` for CT and MRI) and the classical baselines. Behaviour that
differs between tasks reads :class:`TaskSpec` fields (``modality``, ``complex_valued``,
``has_fbp``, ``psnr_data_range``, ``display``, ``builtin_kind``, ``file_formats``), never the
task name: a new task is a new :class:`TaskSpec` (and its operator) plus registrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from luser_cli.errors import ConfigError

TaskName = Literal["deblur", "ct", "mri4x", "mri8x"]
TASK_NAMES: tuple[str, ...] = ("deblur", "ct", "mri4x", "mri8x")


#: Largest image side any operator is built for (``--image-size``, presets, input files).
MAX_IMAGE_SIZE = 4096
#: Largest seed (``--seed``): what a 64-bit signed integer holds.
MAX_SEED = 2**63 - 1
#: Largest CT angle count (LoDoPaB has 1000): bounds the operator before anything is built.
MAX_CT_ANGLES = 20_000
#: Largest noise level (std in image units) and photon count accepted.
MAX_NOISE_STD = 1e3
MAX_PHOTONS = 1e12


class _Strict(BaseModel):
    """Physics settings: no unknown keys, no lax coercion (``"9"`` or ``true`` for a number),
    finite and bounded values, checked before any operator is built."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DeblurPhysics(_Strict):
    """Gaussian blur (same kernel on every channel, circular boundary) plus white noise."""

    kernel_size: int = Field(9, ge=1, le=63, description="odd kernel side, pixels")
    variance: float = Field(5.0, gt=0, le=1e4, description="Gaussian variance, pixels^2")
    noise_std: float = Field(
        0.01, ge=0, le=MAX_NOISE_STD, description="AWGN std, image units ([0, 1] range)"
    )


class CTPhysics(_Strict):
    """Parallel-beam Radon with LoDoPaB-CT geometry and post-log Poisson noise."""

    angles_total: int = Field(
        1000, ge=1, le=MAX_CT_ANGLES, description="full LoDoPaB angle count over [0, pi)"
    )
    angle_step: int = Field(
        5, ge=1, le=MAX_CT_ANGLES, description="use every n-th angle (5 -> 200 of 1000)"
    )
    photons: float = Field(
        4096.0, ge=0, le=MAX_PHOTONS, description="N0 incident photons per bin; 0 = no noise"
    )
    mu_max: float = Field(81.35858, gt=0, le=1e6, description="attenuation of x = 1, in 1/m")


class MRIPhysics(_Strict):
    """Centred orthonormal 2D FFT with a fastMRI-style random column mask."""

    acceleration: int = Field(4, ge=1, le=64)
    center_fraction: float = Field(0.08, gt=0, le=1)
    noise_std: float = Field(
        0.0, ge=0, le=MAX_NOISE_STD, description="complex AWGN std per sampled k-space entry"
    )


PhysicsSettings = DeblurPhysics | CTPhysics | MRIPhysics

#: What the images are: RGB photos, CT attenuation maps, MR slices (complex, real/imag channels).
Modality = Literal["rgb", "ct", "mri"]
#: PSNR/SSIM ``data_range`` rule: ``unit`` = 1 (images in [0, 1]); ``image_range`` = the
#: target's max - min; ``volume_max`` = the volume's max (fastMRI), else the target's max.
DataRangeRule = Literal["unit", "image_range", "volume_max"]
#: How a model-channel image becomes the displayed/compared one: ``as_is`` (RGB, CT grey) or
#: ``magnitude`` (``(B, 1, H, W)`` norm over the real/imag channels, MRI).
DisplayRule = Literal["as_is", "magnitude"]


@dataclass(frozen=True)
class TaskSpec:
    """One task. Code that differs between tasks reads these fields, not the task name."""

    name: str
    description: str
    channels: int
    image_size: int  # the paper's image side (CelebA 128, LoDoPaB 362, fastMRI 320)
    initial_estimate: Literal["measurement", "adjoint"]
    classical_methods: tuple[str, ...]
    physics_defaults: PhysicsSettings
    modality: Modality
    #: images are complex, stored as real/imag channels (MRI); per-item sampling masks.
    complex_valued: bool
    #: a filtered back-projection exists (CT): ``fbp`` method, initial estimate and data step.
    has_fbp: bool
    psnr_data_range: DataRangeRule
    display: DisplayRule
    #: what ``--builtin auto`` generates (:mod:`luser_cli.data.builtin_images`).
    builtin_kind: Literal["photos", "ellipses"]
    #: public data sets whose files ``luser reconstruct`` reads for this task (``lodopab``
    #: observations, ``fastmri`` single-coil k-space).
    file_formats: tuple[str, ...]

    def settings_class(self) -> type[BaseModel]:
        """The class of this task's physics settings (``CTPhysics``, ...)."""
        return type(self.physics_defaults)


def _mri_task(name: str, *, acceleration: int, center_fraction: float) -> TaskSpec:
    """A single-coil MRI task: the two differ only in the mask's acceleration and centre."""
    return TaskSpec(
        name=name,
        description=f"single-coil MRI, {acceleration}x random column undersampling "
        f"(centre {center_fraction:g})",
        channels=2,
        image_size=320,
        initial_estimate="adjoint",
        classical_methods=("zero-filled", "adjoint", "tv"),
        physics_defaults=MRIPhysics(acceleration=acceleration, center_fraction=center_fraction),
        modality="mri",
        complex_valued=True,
        has_fbp=False,
        psnr_data_range="volume_max",
        display="magnitude",
        builtin_kind="ellipses",
        file_formats=("fastmri",),
    )


TASKS: dict[str, TaskSpec] = {
    "deblur": TaskSpec(
        name="deblur",
        description="RGB deblurring: 9x9 Gaussian blur (variance 5) + AWGN 0.01",
        channels=3,
        image_size=128,
        initial_estimate="measurement",
        classical_methods=("input", "adjoint", "tv"),
        physics_defaults=DeblurPhysics(),
        modality="rgb",
        complex_valued=False,
        has_fbp=False,
        psnr_data_range="unit",
        display="as_is",
        builtin_kind="photos",
        file_formats=(),
    ),
    "ct": TaskSpec(
        name="ct",
        description="low-dose parallel-beam CT: 200 of 1000 LoDoPaB angles, Poisson N0=4096",
        channels=1,
        image_size=362,
        initial_estimate="adjoint",
        classical_methods=("adjoint", "fbp", "tv"),
        physics_defaults=CTPhysics(),
        modality="ct",
        complex_valued=False,
        has_fbp=True,
        psnr_data_range="image_range",
        display="as_is",
        builtin_kind="ellipses",
        file_formats=("lodopab",),
    ),
    "mri4x": _mri_task("mri4x", acceleration=4, center_fraction=0.08),
    "mri8x": _mri_task("mri8x", acceleration=8, center_fraction=0.04),
}


def tasks_reading(file_format: str) -> tuple[str, ...]:
    """The tasks whose :attr:`TaskSpec.file_formats` include ``file_format``, in table order."""
    return tuple(name for name, spec in TASKS.items() if file_format in spec.file_formats)


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with a one-line error listing the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}"
        ) from None
