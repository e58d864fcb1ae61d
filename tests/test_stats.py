"""Paired per-seed differences: pinned against hand computation and Student-t table values."""

import math

import pytest

from tiltedsam.harness.stats import paired_by_seed, paired_difference


def test_interval_matches_hand_computation():
    # differences 1, 2, 3: mean 2, sd 1, t_{0.975, 2} = 4.302652729911275 (table value)
    result = paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert result.mean == pytest.approx(2.0)
    assert result.std == pytest.approx(1.0)
    assert result.low == pytest.approx(2.0 - half, rel=1e-9)
    assert result.high == pytest.approx(2.0 + half, rel=1e-9)
    assert result.verdict() == "inside noise"  # 2 - 2.48 < 0


def test_pairing_cancels_shared_seed_effect():
    # a large shared seed effect and a constant +0.5 gap: zero-width interval, clearly better
    reference = [0.5, 0.9, 0.7, 0.2, 0.8]
    result = paired_difference([r + 0.5 for r in reference], reference)
    assert result.low == pytest.approx(0.5) and result.high == pytest.approx(0.5)
    assert result.verdict() == "better"
    assert paired_difference(reference, [r + 0.5 for r in reference]).verdict() == "worse"


def test_confidence_level_widens_interval():
    a, b = [1.0, 3.0, 2.5, 4.0], [0.0, 1.0, 2.0, 1.0]
    narrow, wide = paired_difference(a, b, 0.8), paired_difference(a, b, 0.99)
    assert wide.low < narrow.low < narrow.mean < narrow.high < wide.high
    # t_{0.995, 3} = 5.840909309733 (table value)
    diffs = [1.0, 2.0, 0.5, 3.0]
    sd = math.sqrt(sum((d - 1.625) ** 2 for d in diffs) / 3)
    assert wide.high - wide.mean == pytest.approx(5.840909309733 * sd / 2, rel=1e-9)


def test_single_pair_has_no_interval_and_text_says_so():
    result = paired_difference([0.9], [0.8])
    assert result.low is None and result.verdict() == "n<2"
    assert "no interval" in result.text(scale=100)
    assert paired_difference([0.9, 0.95], [0.8, 0.8]).text(scale=100, unit=" points").startswith("+12.50 points [")


def test_by_seed_pairs_common_seeds_only():
    result = paired_by_seed({0: 0.9, 1: 0.8, 7: 0.1}, {1: 0.7, 0: 0.85, 3: 0.2})
    assert result.n == 2 and result.mean == pytest.approx((0.05 + 0.1) / 2)
    with pytest.raises(ValueError, match="no common seed"):
        paired_by_seed({0: 1.0}, {1: 1.0})


@pytest.mark.parametrize(
    "values, reference, confidence, match",
    [([1.0], [1.0, 2.0], 0.95, "same seeds"), ([], [], 0.95, "at least one"),
     ([float("nan")], [1.0], 0.95, "finite"), ([1.0], [1.0], 1.0, "confidence")],
)
def test_bad_input_named(values, reference, confidence, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(values, reference, confidence)
