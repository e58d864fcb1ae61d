"""Edge cases of the tilt math: the inputs it accepts (scalars, integers, empty or non-finite losses), the
limits of the ESS rule (ties, ``t = inf``, a cap of zero) and the bisection's exact supremum."""

from __future__ import annotations

import math

import pytest
import torch

from tiltedsam.tilt import (AutoTilt, NonFiniteLossError, effective_sample_size_at_tilt, largest_tilt_at_least,
                            tilt_for_ess, tilted_mean, tilted_weights)


def test_a_scalar_or_integer_loss_is_one_float64_sample():
    assert tilted_weights(torch.tensor(3.0), 2.0).tolist() == [1.0]
    out = tilted_mean([1, 3], 0.0)  # integers are averaged as float64, not truncated
    assert out.dtype == torch.float64 and out.item() == 2.0
    out = tilted_mean([0.1, 0.2], 0.0)  # a list of floats is read in float64, not torch's default float32
    assert out.dtype == torch.float64 and out.item() == (0.1 + 0.2) / 2
    out = tilted_mean(torch.tensor([1, 2]), 0.0)
    assert out.dtype == torch.float64 and out.item() == 1.5


def test_an_empty_loss_vector_is_an_error_that_says_so():
    for empty in ([], torch.zeros(0), torch.zeros(2, 0)):
        with pytest.raises(ValueError) as excinfo:
            tilted_mean(empty, 1.0)
        assert str(excinfo.value).startswith("need at least one loss value")


def test_a_non_finite_loss_names_its_positions_and_values_and_the_way_out():
    losses = [0.0, math.nan, 1.0, math.inf]
    with pytest.raises(NonFiniteLossError) as excinfo:
        tilted_weights(losses, 1.0)
    message = str(excinfo.value)
    assert "positions [1, 3]" in message and "[nan, inf]" in message and "nonfinite='ignore'" in message
    many = [math.nan] * 12 + [0.0]
    with pytest.raises(NonFiniteLossError) as excinfo:
        tilted_weights(many, 1.0)
    assert f"positions {list(range(10))} " in str(excinfo.value)  # the first ten only


def test_ignored_non_finite_losses_get_zero_weight_unless_none_is_left():
    weights = tilted_weights([0.0, math.nan, 0.0], 1.0, nonfinite="ignore").tolist()
    assert weights == [0.5, 0.0, 0.5]
    with pytest.raises(NonFiniteLossError) as excinfo:
        tilted_weights([math.nan, -math.inf], 1.0, nonfinite="ignore")
    assert "every loss value is non-finite" in str(excinfo.value)
    with pytest.raises(NonFiniteLossError):  # one row of a batch of loss vectors with nothing left
        tilted_weights([[0.0, 1.0], [math.nan, math.nan]], 1.0, nonfinite="ignore")


@pytest.mark.parametrize("policy", ["skip", "RAISE", None])
def test_an_unknown_nonfinite_policy_is_named(policy):
    with pytest.raises(ValueError) as excinfo:
        tilted_weights([0.0, 1.0], 1.0, nonfinite=policy)
    assert f"got {policy!r}" in str(excinfo.value) and "'raise' or 'ignore'" in str(excinfo.value)


def test_the_ess_at_infinite_tilt_counts_the_losses_tied_at_the_maximum():
    assert effective_sample_size_at_tilt([1.0, 3.0, 3.0], math.inf) == pytest.approx(2.0, rel=1e-15)
    assert effective_sample_size_at_tilt([5.0, 1.0, 2.0, 0.0], math.inf) == pytest.approx(1.0, rel=1e-15)


def test_the_ess_rule_needs_a_vector_of_losses():
    with pytest.raises(ValueError) as excinfo:
        tilt_for_ess(torch.zeros(2, 3), 0.5, max_tilt=1.0)
    assert "1-D" in str(excinfo.value) and "(2, 3)" in str(excinfo.value)


def test_tied_losses_give_the_cap_even_for_a_target_of_one():
    assert tilt_for_ess([2.0, 2.0, 2.0], 1.0, max_tilt=5.0) == 5.0
    assert tilt_for_ess([2.0, 1.0, 2.0], 1.0, max_tilt=5.0) == 0.0  # only t = 0 keeps ESS = n


def test_the_bisection_finds_the_supremum_to_its_default_relative_precision():
    # log ESS(tau) = -tau crosses -1 at tau = 1
    assert largest_tilt_at_least(lambda tau: -tau, -1.0, 10.0) == pytest.approx(1.0, rel=1e-10)
    # a small cap: the tolerance is relative to it, not absolute
    assert largest_tilt_at_least(lambda tau: -tau, -3e-4, 1e-3) == pytest.approx(3e-4, rel=1e-10, abs=0)


def test_the_bisection_keeps_a_point_exactly_at_the_target():
    # the set {tau : f(tau) >= 0} is [0, 0.5]: its supremum 0.5 is the first midpoint and belongs to it
    step = lambda tau: 0.0 if tau <= 0.5 else -1.0  # noqa: E731
    assert largest_tilt_at_least(step, 0.0, 1.0) == 0.5


def test_the_adaptive_rule_learns_nothing_from_a_zero_cap_or_no_finite_loss():
    rule = AutoTilt(0.5, 0.9)
    assert rule.observe([0.0, 1.0, 2.0], 0.0) == 0.0 and rule.log_ema is None
    assert rule.observe([math.nan, math.inf], 3.0) == 3.0 and rule.log_ema is None
    chosen = rule.observe([0.0, 1.0, 2.0], 1.0)  # a cap of one is an ordinary cap
    assert rule.log_ema is not None and chosen == tilt_for_ess([0.0, 1.0, 2.0], 0.5, max_tilt=1.0)


def test_the_tilted_mean_of_a_tiny_spread_is_the_second_order_expansion():
    # t * spread = 1e-323 (two units of the smallest subnormal): exp/log there keep no digits, while
    # mean + (t/2) var = 5e-171 + 0.5 * 1e-153 * 2.5e-341 = 5e-171 is exact
    assert tilted_mean([0.0, 1e-170], 1e-153).item() == pytest.approx(5e-171, rel=1e-12, abs=0)
