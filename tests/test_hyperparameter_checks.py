"""The one check of a hyper-parameter (``check_hyperparameter``), of a tilt (``check_tilt``) and of the
adaptive-tilt settings: what passes, what it is returned as, and that a rejection names the setting,
the bad value and the allowed range."""

from __future__ import annotations

import math

import pytest
import torch

from tiltedsam.functional import check_hyperparameter
from tiltedsam.optim.diagnostics import ess_message
from tiltedsam.tilt import AutoTilt, check_tilt, tilt_for_ess


def _message(excinfo) -> str:
    return str(excinfo.value)


# ---------------------------------------------------------------- numbers
def test_a_number_is_returned_as_float_and_the_default_range_is_the_whole_real_line():
    for value in (3, -1e300, 1e300, 0, 2.5):
        out = check_hyperparameter("x", value)
        assert type(out) is float and out == float(value)
    out = check_hyperparameter("x", torch.tensor(0.25))  # torch accepts tensor learning rates
    assert type(out) is float and out == 0.25


@pytest.mark.parametrize("value", [True, False, "1", None, [1.0], torch.tensor([1.0, 2.0]), torch.tensor(True)])
def test_a_value_that_is_not_a_real_number_is_a_type_error_naming_it(value):
    with pytest.raises(TypeError) as excinfo:
        check_hyperparameter("lr", value)
    assert "lr" in _message(excinfo) and "real number" in _message(excinfo) and repr(value) in _message(excinfo)


def test_nan_and_inf_are_rejected_and_an_unbounded_message_names_no_bounds():
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("rho", math.nan)
    assert "rho must be a finite number, got nan" in _message(excinfo)
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("rho", math.inf)
    assert "finite number, got inf" in _message(excinfo)
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("rho", math.nan, allow_inf=True)  # NaN is never allowed
    assert "rho must be a number (inf allowed), got nan" in _message(excinfo)


def test_allow_inf_accepts_infinity_inside_the_range_only():
    assert check_hyperparameter("t", math.inf, low=0.0, allow_inf=True) == math.inf
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("t", -math.inf, low=0.0, allow_inf=True)
    assert ">= 0" in _message(excinfo) and "-inf" in _message(excinfo)


def test_the_ends_are_inclusive_by_default():
    assert check_hyperparameter("x", 0.0, low=0.0) == 0.0
    assert check_hyperparameter("x", 1.0, high=1.0) == 1.0
    assert check_hyperparameter("x", 0.5, low=0.0, high=1.0) == 0.5


def test_open_ends_reject_the_end_itself_and_say_so():
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("beta", 0.0, low=0.0, low_inclusive=False)
    assert "beta" in _message(excinfo) and "> 0" in _message(excinfo) and ">=" not in _message(excinfo)
    assert check_hyperparameter("beta", 1e-300, low=0.0, low_inclusive=False) == 1e-300
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("beta", 1.0, high=1.0, high_inclusive=False)
    assert "< 1" in _message(excinfo) and "<=" not in _message(excinfo)
    assert check_hyperparameter("beta", 0.999, high=1.0, high_inclusive=False) == 0.999


def test_out_of_range_names_both_bounds_and_the_value():
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError) as excinfo:
            check_hyperparameter("momentum", bad, low=0.0, high=1.0)
        message = _message(excinfo)
        assert "momentum" in message and ">= 0 and <= 1" in message and f"got {bad!r}" in message
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("lr", -1, low=0.0)
    assert "lr must be a finite number >= 0, got -1" in _message(excinfo)
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("lr", 3, high=2.5)
    assert "<= 2.5, got 3" in _message(excinfo)


# ---------------------------------------------------------------- integers
def test_integers_are_returned_as_int_with_inclusive_bounds():
    out = check_hyperparameter("samples", 4, integer=True, low=1, high=4)
    assert type(out) is int and out == 4
    assert check_hyperparameter("samples", 1, integer=True, low=1, high=4) == 1
    assert check_hyperparameter("n", -7, integer=True) == -7  # unbounded by default


@pytest.mark.parametrize("value", [True, 2.0, "2", None])
def test_a_non_integer_is_rejected_with_its_value(value):
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("samples", value, integer=True, low=1)
    assert "samples must be an integer >= 1" in _message(excinfo) and repr(value) in _message(excinfo)


def test_an_integer_out_of_range_names_the_range():
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("samples", 0, integer=True, low=1)
    assert "integer >= 1, got 0" in _message(excinfo)
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("samples", 5, integer=True, low=1, high=4)
    assert ">= 1 and <= 4, got 5" in _message(excinfo)
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("steps", 1.5, integer=True)  # no bounds: no dangling space before the comma
    assert "steps must be an integer, got 1.5" in _message(excinfo)


# ---------------------------------------------------------------- choices
def test_a_flag_takes_only_a_bool_and_returns_it():
    assert check_hyperparameter("adaptive", True, choices=(True, False)) is True
    assert check_hyperparameter("adaptive", False, choices=[False, True]) is False
    for bad in (1, 0, "True", None):
        with pytest.raises(ValueError) as excinfo:
            check_hyperparameter("adaptive", bad, choices=(True, False))
        assert "adaptive must be True or False" in _message(excinfo) and repr(bad) in _message(excinfo)


def test_choices_return_the_value_unchanged_and_list_the_allowed_ones():
    value = "uniform"
    assert check_hyperparameter("noise", value, choices=["gaussian", "uniform"]) is value
    with pytest.raises(ValueError) as excinfo:
        check_hyperparameter("noise", "laplace", choices=["gaussian", "uniform"])
    assert "noise must be one of ('gaussian', 'uniform'), got 'laplace'" in _message(excinfo)


# ---------------------------------------------------------------- tilt
def test_check_tilt_accepts_zero_to_infinity_as_float():
    for value, expected in ((0, 0.0), (2, 2.0), (math.inf, math.inf), (torch.tensor(1.5), 1.5)):
        out = check_tilt(value)
        assert type(out) is float and out == expected


def test_check_tilt_names_the_setting_and_the_value():
    with pytest.raises(TypeError) as excinfo:
        check_tilt(True, "max_tilt")
    assert "max_tilt" in _message(excinfo) and "True" in _message(excinfo)
    with pytest.raises(TypeError) as excinfo:
        check_tilt("3")
    assert "tilt must be a real number >= 0" in _message(excinfo) and "'3'" in _message(excinfo)
    for bad in (-1.0, math.nan, -math.inf, -1e-300):
        with pytest.raises(ValueError) as excinfo:
            check_tilt(bad, "t0")
        assert "t0 must be >= 0" in _message(excinfo) and repr(float(bad)) in _message(excinfo)


def test_auto_tilt_settings_accept_their_documented_ranges():
    rule = AutoTilt(1, 0)
    assert (rule.target_ess, rule.smoothing, rule.log_ema) == (1.0, 0.0, None)
    assert type(rule.target_ess) is float and type(rule.smoothing) is float
    rule = AutoTilt(1e-9, 0.999999, log_ema=0.5)
    assert (rule.target_ess, rule.smoothing, rule.log_ema) == (1e-9, 0.999999, 0.5)


@pytest.mark.parametrize("target, smoothing, name, allowed", [
    (0.0, 0.5, "target_ess", "a fraction in (0, 1]"),
    (1.0000001, 0.5, "target_ess", "a fraction in (0, 1]"),
    (2.0, 0.5, "target_ess", "a fraction in (0, 1]"),
    (True, 0.5, "target_ess", "a fraction in (0, 1]"),
    ("0.5", 0.5, "target_ess", "a fraction in (0, 1]"),
    (0.5, 1.0, "tilt_smoothing", "in [0, 1)"),
    (0.5, -1e-9, "tilt_smoothing", "in [0, 1)"),
    (0.5, False, "tilt_smoothing", "in [0, 1)"),
    (0.5, None, "tilt_smoothing", "in [0, 1)"),
])
def test_auto_tilt_rejects_settings_out_of_range_by_name(target, smoothing, name, allowed):
    with pytest.raises(ValueError) as excinfo:
        AutoTilt(target, smoothing)
    bad = target if name == "target_ess" else smoothing
    assert _message(excinfo) == f"{name} must be {allowed}, got {bad!r}"


def test_the_cap_of_the_adaptive_tilt_must_be_finite_and_is_named():
    assert AutoTilt.check_cap(3) == 3.0
    with pytest.raises(ValueError) as excinfo:
        AutoTilt.check_cap(math.inf)
    assert _message(excinfo).startswith("max_tilt must be finite")
    with pytest.raises(ValueError) as excinfo:
        AutoTilt.check_cap(-1.0)
    assert _message(excinfo).startswith("max_tilt must be >= 0")


def test_tilt_for_ess_names_its_bad_settings():
    losses = [0.0, 1.0, 2.0]
    with pytest.raises(ValueError) as excinfo:
        tilt_for_ess(losses, 0.5, max_tilt=math.inf)
    assert _message(excinfo).startswith("max_tilt must be finite")
    with pytest.raises(ValueError) as excinfo:
        tilt_for_ess(losses, 0.5, max_tilt=-2.0)
    assert _message(excinfo).startswith("max_tilt must be >= 0")
    for bad in (0.0, -1e-3):
        with pytest.raises(ValueError) as excinfo:
            tilt_for_ess(losses, 0.5, max_tilt=10.0, rel_tol=bad)
        assert f"rel_tol must be > 0, got {bad!r}" in _message(excinfo)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError) as excinfo:
            tilt_for_ess(losses, bad, max_tilt=10.0)
        assert "target_ess" in _message(excinfo) and "(0, 1]" in _message(excinfo)


# ---------------------------------------------------------------- the ESS warning
def test_the_uniform_weights_warning_starts_at_exactly_99_percent_of_s():
    s = 100
    message = ess_message(99.0, s)  # 0.99 * s exactly: uniform (the bound is inclusive)
    assert message is not None and "mean ESS 99.000 of s=100" in message and "uniform" in message
    assert "no effect (TSAM = average of s noisy SAM gradients)" in message
    assert "raise t, noise_radius or rho until ESS drops, e.g. calibrate t to ESS ≈ s/2 with tiltedsam.tilt.tilt_for_ess" in message
    assert "losses (docs/tuning.md, docs/label-noise.md)" in message
    assert ess_message(98.9, s) is None


def test_the_one_sample_warning_starts_at_ess_1_05():
    message = ess_message(1.05, 8)
    assert message is not None and "one sample takes all the weight" in message and "lower t" in message
    assert "cost for one noisy point); lower t" in message and message.endswith("(docs/tuning.md)")
    assert ess_message(1.06, 8) is None
