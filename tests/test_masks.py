"""fastMRI-style column masks: acceleration, centre block, reproducibility, stable seeds.

Tolerances: with the default fixed-count draw a mask samples exactly ``round(width /
acceleration)`` columns. With fastMRI's independent draws (``exact=False``) the count is
binomial: every mask lies within 5 standard deviations of ``width / acceleration`` and the mean
over 400 seeds within 4 standard errors. (Test names avoid the substring "ct" so that
``-k "not ct"`` only drops CT cases.)
"""

from __future__ import annotations

import math

import pytest
import torch

from luser_cli.errors import ConfigError
from luser_cli.operators.masks import (
    acceleration_of,
    center_fraction_of,
    center_slice,
    mask_seed,
    num_low_frequencies,
    random_column_mask,
)

WIDTHS = [368, 320, 372, 64, 21]
SETTINGS = [(4, 0.08), (8, 0.04)]


def _fastmri_centre(width: int, center_fraction: float) -> slice:
    """Where fastMRI's RandomMaskFunc puts the fully sampled block (fastmri/data/subsample.py)."""
    num_low = round(width * center_fraction)
    pad = (width - num_low + 1) // 2
    return slice(pad, pad + num_low)


@pytest.mark.parametrize(("acc", "cf"), SETTINGS, ids=["4x", "8x"])
@pytest.mark.parametrize("width", WIDTHS)
def test_fixed_count_masks_hit_acceleration(width: int, acc: int, cf: float) -> None:
    for seed in range(20):
        mask = random_column_mask(width, acc, cf, seed)
        assert mask.dtype == torch.bool and mask.shape == (width,)
        assert int(mask.sum()) == round(width / acc)
        assert acceleration_of(mask) == pytest.approx(width / round(width / acc))
        if width % acc == 0:
            assert acceleration_of(mask) == acc
        centre = _fastmri_centre(width, cf)
        assert mask[centre].all()
        assert mask[width // 2]  # the DC column of the centred spectrum
        assert center_fraction_of(mask) >= (centre.stop - centre.start) / width


@pytest.mark.parametrize(("acc", "cf"), SETTINGS, ids=["4x", "8x"])
@pytest.mark.parametrize("width", WIDTHS)
def test_random_draw_masks_hit_acceleration_on_average(width: int, acc: int, cf: float) -> None:
    num_low = num_low_frequencies(width, cf)
    outer = width - num_low
    prob = (width / acc - num_low) / outer  # fastMRI's RandomMaskFunc probability
    sd = math.sqrt(outer * prob * (1 - prob))
    counts = []
    for seed in range(400):
        mask = random_column_mask(width, acc, cf, seed, exact=False)
        assert mask[_fastmri_centre(width, cf)].all()
        counts.append(int(mask.sum()))
        assert abs(counts[-1] - width / acc) <= 5 * sd + 1e-9
    mean = sum(counts) / len(counts)
    assert abs(mean - width / acc) <= 4 * sd / math.sqrt(len(counts))


def test_centre_block_matches_fastmri_for_the_knee_width() -> None:
    mask = random_column_mask(368, 4, 0.08, seed=0)
    assert num_low_frequencies(368, 0.08) == 29
    assert center_slice(368, 29) == slice(170, 199)
    assert mask[170:199].all()
    assert num_low_frequencies(320, 0.04) == 13 and center_slice(320, 13) == slice(154, 167)


@pytest.mark.parametrize("width", [8, 9, 20, 21, 368, 369])
@pytest.mark.parametrize("num_low", [1, 2, 3, 8])
def test_centre_block_contains_dc(width: int, num_low: int) -> None:
    s = center_slice(width, num_low)
    assert s.start <= width // 2 < s.stop and s.stop - s.start == num_low


def test_same_seed_same_mask_and_seeds_differ() -> None:
    for exact in (True, False):
        a = random_column_mask(368, 4, 0.08, 123, exact=exact)
        b = random_column_mask(368, 4, 0.08, 123, exact=exact)
        assert torch.equal(a, b)
        masks = {
            tuple(random_column_mask(368, 4, 0.08, s, exact=exact).tolist()) for s in range(20)
        }
        assert len(masks) == 20
    # the global RNGs are neither used nor disturbed
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    random_column_mask(368, 4, 0.08, 5)
    assert torch.equal(torch.rand(1), before)


def test_mask_seed_is_stable_across_processes() -> None:
    # hard-coded: sha256(b"file1000001.h5:17")[:4], little endian; never Python's salted hash
    assert mask_seed("file1000001.h5", 17) == 1919203523
    assert mask_seed("/data/knee/singlecoil_val/file1000001.h5", 17) == 1919203523
    assert mask_seed("file1000001.h5", 18) != mask_seed("file1000001.h5", 17)
    assert mask_seed("file1000002.h5", 17) != mask_seed("file1000001.h5", 17)
    assert all(0 <= mask_seed("f.h5", i) < 2**32 for i in range(50))


def test_full_sampling_and_invalid_settings() -> None:
    assert random_column_mask(64, 1, 0.08, 0).all()
    assert random_column_mask(64, 1, 0.08, 0, exact=False).all()
    assert random_column_mask(64, 1, 1.0, 0).all()
    with pytest.raises(ConfigError, match="acceleration"):
        random_column_mask(64, 0.5, 0.08, 0)
    with pytest.raises(ConfigError, match="center_fraction"):
        random_column_mask(64, 4, 0.0, 0)
    with pytest.raises(ConfigError, match="center_fraction"):
        random_column_mask(64, 4, 1.5, 0)
    with pytest.raises(ConfigError, match="keeps 32 of 64 columns"):
        random_column_mask(64, 4, 0.5, 0)
    with pytest.raises(ConfigError, match="width"):
        random_column_mask(0, 4, 0.08, 0)


def test_acceleration_and_centre_helpers() -> None:
    m = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    assert acceleration_of(m) == 2.5
    assert center_fraction_of(m) == pytest.approx(0.3)  # run 3..5 around DC column 5
    assert center_fraction_of(torch.tensor([1.0, 1.0, 0.0, 1.0])) == 0.0  # DC column 2 missing
    assert acceleration_of(torch.zeros(5)) == math.inf
    assert acceleration_of(torch.ones(1, 1, 1, 8)) == 1.0  # any shape, float masks
