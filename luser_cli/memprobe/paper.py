"""Paper Table 3 (Guan et al., LUSER): parameters and maximum training batch sizes.

The paper reports batch sizes "with maximum even numbers, except when it is 1", and notes that
its MRI code could not run batch 1 (its Fourier transform needed batch 2), so its MRI "–"
means that batch 2 did not fit. "–" (batch 1 does not fit) is stored as 0, like our
``max_batch``. Image sizes: LoDoPaB-CT 362 x 362, fastMRI knee 320 x 320; the CelebA size is
not stated in the paper (our deblur preset uses 128 x 128). The paper trained on one 24 GB
RTX 6000; how the 8 and 10 GB figures were obtained is not stated.
"""

from __future__ import annotations

from luser_cli.tasks import TASKS

__all__ = [
    "PAPER_CAPACITIES_GB",
    "PAPER_GROUP_OF_MODALITY",
    "PAPER_MAX_BATCH",
    "PAPER_PARAMETERS",
    "paper_max_batch",
    "paper_parameters",
    "paper_rounding",
    "paper_task",
]

#: GPU capacities of Table 3, GB.
PAPER_CAPACITIES_GB: tuple[int, ...] = (8, 10, 24)

#: Table 3's row group of each task modality (``TaskSpec.modality``): one data set each.
PAPER_GROUP_OF_MODALITY: dict[str, str] = {"rgb": "deblur", "ct": "ct", "mri": "mri"}

#: row group -> model -> {GPU GB: max batch}; 0 = "–".
PAPER_MAX_BATCH: dict[str, dict[str, dict[int, int]]] = {
    "deblur": {
        "lu-dncnn": {8: 1, 10: 1, 24: 4},
        "deq4ip": {8: 16, 10: 16, 24: 68},
        "luser-sw": {8: 10, 10: 14, 24: 34},
        "luser-dw": {8: 10, 10: 14, 24: 34},
    },
    "ct": {
        "lu-dncnn": {8: 0, 10: 0, 24: 2},
        "deq4ip": {8: 4, 10: 6, 24: 20},
        "luser-sw": {8: 2, 10: 4, 24: 10},
        "luser-dw": {8: 2, 10: 4, 24: 10},
    },
    "mri": {
        "lu-dncnn": {8: 0, 10: 2, 24: 4},
        "deq4ip": {8: 4, 10: 6, 24: 16},
        "luser-sw": {8: 4, 10: 4, 24: 12},
        "luser-dw": {8: 4, 10: 4, 24: 12},
    },
}

#: row group -> model -> trainable parameters as printed in Table 3 (deblur LU-DnCNN, DEQ4IP and
#: LUSER-SW there include the 243 entries of the 9x9x3 blur kernel; ours do not).
PAPER_PARAMETERS: dict[str, dict[str, int]] = {
    "deblur": {"lu-dncnn": 558_580, "deq4ip": 558_580, "luser-sw": 96_503, "luser-dw": 770_073},
    "ct": {"lu-dncnn": 556_033, "deq4ip": 556_033, "luser-sw": 93_954, "luser-dw": 751_625},
    "mri": {"lu-dncnn": 557_185, "deq4ip": 557_185, "luser-sw": 95_107, "luser-dw": 760_849},
}


def paper_task(task: str) -> str | None:
    """The Table 3 row group of one of our tasks, by its modality (mri4x and mri8x share the
    MRI rows: the acceleration does not change the memory); None for an unknown name."""
    spec = TASKS.get(task)
    return None if spec is None else PAPER_GROUP_OF_MODALITY.get(spec.modality)


def paper_max_batch(task: str, model: str, gpu_gb: float) -> int | None:
    """The paper's max batch (0 = "–"), or None where Table 3 has no entry."""
    group = paper_task(task)
    if group is None or float(gpu_gb) not in PAPER_CAPACITIES_GB:
        return None
    return PAPER_MAX_BATCH[group].get(model, {}).get(int(gpu_gb))


def paper_parameters(task: str, model: str) -> int | None:
    group = paper_task(task)
    return None if group is None else PAPER_PARAMETERS[group].get(model)


def paper_rounding(batch: int) -> int:
    """The paper's convention: the largest even number not above ``batch``, except 1 (and 0,
    "–") which stay as they are."""
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    return batch if batch <= 1 else batch - batch % 2
