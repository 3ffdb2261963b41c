"""The generated ground truths of the built-in data: ellipse phantoms, photo patches, or a mix.

A built-in image is drawn from its item seed alone (:func:`luser_cli.data.splits.item_seed`),
so every split and seed is reproducible and needs no files beyond scikit-image's bundled photos.

Kinds (``[data] builtin`` / ``--builtin``):

- ``ellipses``: dival-style random ellipse phantoms (CT: scaled to a peak attenuation of
  :data:`CT_PHANTOM_MAX`; MRI: a real magnitude image in ``[0, 1]``);
- ``photos``: patches of scikit-image's colour photographs (:mod:`luser_cli.data.photos`, split
  by photograph), grey for CT and MRI; for CT the grey values are scaled to a random peak
  attenuation in ``[CT_PHOTO_PEAK]`` (LoDoPaB units, soft tissue is about 0.25);
- ``mix``: each item is a photo patch or an ellipse phantom with probability 1/2 each — natural
  textures so the prox does not learn only piecewise-constant images;
- ``scans``: patches of real MR slices bundled with nibabel and pydicom
  (:mod:`luser_cli.data.scans`, split by acquisition), zoomed in and out so that smooth,
  upsampled anatomy is seen too; for CT scaled like the photos;
- ``mix-scans``: a photo patch, an MR slice patch or an ellipse phantom with probability 1/3
  each — real anatomy next to natural textures and piecewise-constant shapes;
- ``auto``: photos for deblurring, ellipses otherwise (the paper's data for each task).

``random_phase`` (MRI only): half of the items are multiplied by a smooth random phase
``exp(i phi)``, ``phi`` a random low-frequency field of up to about ±pi, as real MRI images are
complex; the magnitude is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from luser_cli.data.phantoms import random_ellipses
from luser_cli.data.photos import photo_patch
from luser_cli.data.scans import scan_patch
from luser_cli.data.transforms import to_task_channels
from luser_cli.tasks import TaskSpec

#: Peak attenuation of the built-in CT ellipse phantoms (LoDoPaB units, 1 = 81.36 / m): 0.35 is
#: about 28 / m, dense soft tissue. At 1.0 (the ellipse phantom's own [0, 1] range) the body is
#: bone everywhere and a 26 cm path attenuates the beam by e^-10 or more, so with LoDoPaB's 4096
#: photons most detector bins count almost nothing (a photon-starved problem on which FBP and
#: TV both fail; measured in examples/quality-bars.md).
CT_PHANTOM_MAX = 0.35
#: Range of the peak attenuation of grey photo patches for CT (uniform).
CT_PHOTO_PEAK = (0.25, 0.7)
BUILTIN_KINDS = ("auto", "ellipses", "photos", "mix", "scans", "mix-scans")
#: Side of the random field that is upsampled into a smooth phase map.
PHASE_GRID = 4


def resolve_kind(kind: str, spec: TaskSpec) -> str:
    """``auto`` -> the task's :attr:`~luser_cli.tasks.TaskSpec.builtin_kind` (photos for
    deblurring, ellipses otherwise); other kinds unchanged."""
    if kind not in BUILTIN_KINDS:
        raise ValueError(f"unknown built-in data kind {kind!r}; known: {', '.join(BUILTIN_KINDS)}")
    return spec.builtin_kind if kind == "auto" else kind


def builtin_image(kind: str, spec: TaskSpec, split: str, size: int, seed: int) -> np.ndarray:
    """One built-in ground truth ``(C, size, size)`` for item seed ``seed``, before the task's
    channel conversion (:func:`luser_cli.data.transforms.to_task_channels` turns RGB into grey
    and grey into RGB or real + zero imaginary part).

    ``kind`` is resolved with :func:`resolve_kind`. Photos are RGB in ``[0, 1]``, except for CT,
    where they are grey scaled to a random peak in :data:`CT_PHOTO_PEAK`; ellipse phantoms are
    1 channel in ``[0, 1]``, scaled to :data:`CT_PHANTOM_MAX` for CT (1 channel); MR slice
    patches are 1 channel in ``[0, 1]``, scaled like the photos for CT (the ``ct`` modality:
    attenuation maps, 1 channel). The ``auto``, ``photos``,
    ``ellipses`` and ``mix`` kinds give bit-identical images to earlier luser versions.
    """
    kind = resolve_kind(kind, spec)
    attenuation = spec.modality == "ct"
    if kind == "mix":
        kind = "photos" if np.random.default_rng([seed, 1]).random() < 0.5 else "ellipses"
    elif kind == "mix-scans":
        kind = ("photos", "scans", "ellipses")[int(np.random.default_rng([seed, 1]).integers(0, 3))]
    if kind in ("photos", "scans"):
        patch = photo_patch if kind == "photos" else scan_patch
        image = patch(split, size, seed)
        if not attenuation:
            return image
        lo, hi = CT_PHOTO_PEAK
        peak = np.float32(np.random.default_rng([seed, 2]).uniform(lo, hi))
        return to_task_channels(image, "ct") * peak
    image = random_ellipses(size, seed)[None]
    return image * CT_PHANTOM_MAX if attenuation else image


def with_random_phase(image: np.ndarray, seed: int) -> np.ndarray:
    """MRI ``(2, H, W)`` real image (imag = 0) -> the same magnitude times a smooth random phase,
    for half of the seeds (the other half are returned unchanged)."""
    rng = np.random.default_rng([seed, 3])
    if rng.random() < 0.5:
        return image
    phase = smooth_phase(image.shape[-1], rng)
    magnitude = image[0]
    return np.stack([magnitude * np.cos(phase), magnitude * np.sin(phase)]).astype(np.float32)


def smooth_phase(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random smooth phase map ``(size, size)`` in radians: a constant offset plus a
    bicubically upsampled ``PHASE_GRID x PHASE_GRID`` Gaussian field, peak about ±pi."""
    grid = rng.normal(0.0, 1.0, (1, 1, PHASE_GRID, PHASE_GRID)).astype(np.float32)
    field = F.interpolate(
        torch.from_numpy(grid), size=(size, size), mode="bicubic", align_corners=True
    )[0, 0].numpy()
    field = field / max(float(np.abs(field).max()), 1e-6)
    return (rng.uniform(-np.pi, np.pi) + np.pi * field).astype(np.float32)
