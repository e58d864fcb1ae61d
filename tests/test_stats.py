"""Paired per-seed differences: pinned against hand computation and Student-t table values."""

import math

import pytest

from tiltedsam.harness.stats import (holm, minimal_detectable_effect, paired_by_seed, paired_difference,
                                     required_pairs, tost)


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
    assert result.dropped == (3, 7)  # the unpaired seeds are reported, not silently lost
    assert "[3, 7] unpaired" in result.text(scale=100)
    assert paired_by_seed({0: 0.9, 1: 0.8}, {0: 0.7, 1: 0.7}).dropped == ()
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


def test_p_value_matches_scipy_paired_t_test():
    from scipy.stats import ttest_rel

    a, b = [0.91, 0.88, 0.93, 0.90, 0.87], [0.89, 0.88, 0.90, 0.91, 0.85]
    assert paired_difference(a, b).p_value == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
    assert paired_difference([1.0, 2.0], [1.0, 2.0]).p_value == 1.0
    assert paired_difference([0.9], [0.8]).p_value is None


def test_holm_hand_computed_and_monotone():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04); returned in input order
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02]  # one comparison: no correction
    with pytest.raises(ValueError, match="1.5"):
        holm([0.1, 1.5])


def test_tost_matches_two_one_sided_scipy_tests():
    from scipy.stats import ttest_1samp

    a = [0.1, -0.2, 0.05, 0.15, -0.1, 0.0, 0.12, -0.05]
    b = [0.0] * len(a)
    result = tost(a, b, margin=0.3)
    lower = ttest_1samp([x + 0.3 for x in a], 0.0, alternative="greater").pvalue
    upper = ttest_1samp([x - 0.3 for x in a], 0.0, alternative="less").pvalue
    assert result.p_value == pytest.approx(max(lower, upper), rel=1e-9)
    assert result.equivalent and -0.3 < result.low < result.high < 0.3
    # the same data cannot show equivalence within a margin inside its 90% interval
    narrow = tost(a, b, margin=0.05)
    assert not narrow.equivalent and narrow.high > 0.05 or narrow.low < -0.05
    with pytest.raises(ValueError, match="margin"):
        tost(a, b, margin=0.0)


def test_mde_power_table_and_normal_limit():
    # one-sample/paired t, two-sided alpha 0.05: effect size d = 1 needs n = 10 for 80% power
    # (power 0.803 at n = 10, 0.748 at n = 9; standard power tables)
    assert minimal_detectable_effect(1.0, 10) < 1.0 < minimal_detectable_effect(1.0, 9)
    assert required_pairs(1.0, 1.0) == 10
    # large n: (z_0.975 + z_0.8) sd / sqrt(n)
    n = 20000
    assert minimal_detectable_effect(2.0, n) == pytest.approx((1.959964 + 0.841621) * 2.0 / math.sqrt(n), rel=1e-3)
    assert minimal_detectable_effect(3.0, 12) == pytest.approx(3 * minimal_detectable_effect(1.0, 12))
    with pytest.raises(ValueError, match="n must"):
        minimal_detectable_effect(1.0, 1)
