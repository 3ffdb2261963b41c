"""The task table: the per-task behaviour that modules read from :class:`TaskSpec`, and the
lookup errors. (Test names avoid the substring "ct" except for CT cases.)"""

from __future__ import annotations

import pytest
import torch

from luser_cli.classical.methods import check_method
from luser_cli.errors import ConfigError
from luser_cli.evaluation.metrics import data_range
from luser_cli.physics import output_image
from luser_cli.tasks import TASK_NAMES, TASKS, get_task, tasks_reading

# name: channels, modality, complex_valued, has_fbp, psnr_data_range, display, builtin_kind,
# file_formats
EXPECTED = {
    "deblur": (3, "rgb", False, False, "unit", "as_is", "photos", ()),
    "ct": (1, "ct", False, True, "image_range", "as_is", "ellipses", ("lodopab",)),
    "mri4x": (2, "mri", True, False, "volume_max", "magnitude", "ellipses", ("fastmri",)),
    "mri8x": (2, "mri", True, False, "volume_max", "magnitude", "ellipses", ("fastmri",)),
}


def test_task_table_is_the_four_tasks() -> None:
    assert tuple(TASKS) == TASK_NAMES == tuple(EXPECTED)
    for name, spec in TASKS.items():
        assert spec.name == name


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_fields(name: str) -> None:
    s = get_task(name)
    got = (s.channels, s.modality, s.complex_valued, s.has_fbp, s.psnr_data_range, s.display)
    assert (*got, s.builtin_kind, s.file_formats) == EXPECTED[name]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_fields_agree_with_each_other(name: str) -> None:
    s = get_task(name)
    assert s.has_fbp == ("fbp" in s.classical_methods)  # FBP only where offered (CT)
    assert s.complex_valued == (s.channels == 2) == (s.modality == "mri")
    assert (s.display == "magnitude") == s.complex_valued
    assert ("zero-filled" in s.classical_methods) == (s.modality == "mri")
    assert ("input" in s.classical_methods) == (s.initial_estimate == "measurement")


def test_fbp_only_for_the_ct_task() -> None:
    assert [n for n in TASK_NAMES if get_task(n).has_fbp] == ["ct"]
    check_method("fbp", "ct")
    with pytest.raises(ConfigError, match=r"^method 'fbp' needs task ct; task mri4x offers: "):
        check_method("fbp", "mri4x")
    with pytest.raises(ConfigError, match=r"^method 'zero-filled' needs task mri4x or mri8x; "):
        check_method("zero-filled", "deblur")
    with pytest.raises(ConfigError, match=r"^method 'input' needs task deblur; task ct offers"):
        check_method("input", "ct")


def test_file_formats_pick_the_tasks_that_read_them() -> None:
    assert tasks_reading("lodopab") == ("ct",)
    assert tasks_reading("fastmri") == ("mri4x", "mri8x")
    assert tasks_reading("nifti") == ()


def test_data_range_rule_per_task() -> None:
    target = torch.tensor([[0.2, 0.5], [0.3, 0.9]]).numpy()
    assert data_range("deblur", target) == 1.0
    assert data_range("ct", target) == pytest.approx(0.7)
    for name in ("mri4x", "mri8x"):
        assert data_range(name, target) == pytest.approx(0.9)
        assert data_range(name, target, volume_max=2.0) == 2.0


def test_display_rule_per_task() -> None:
    x = torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)
    assert torch.equal(output_image("mri4x", x), torch.full((1, 1, 1, 1), 5.0))
    for name in ("deblur", "ct"):
        y = torch.rand(1, get_task(name).channels, 2, 2)
        assert output_image(name, y) is y


@pytest.mark.parametrize("bad", ["denoise", "mri", "MRI4X", "mri16x", ""])
def test_get_task_error_unchanged(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        get_task(bad)
    assert str(e.value) == f"unknown task {bad!r}; choose one of: deblur, ct, mri4x, mri8x"
