"""TSAM's construction and step program pinned by their contracts: which sampler its arguments build, the
setting (and bad value) each refusal names, the adaptive tilt's cap when ``sample_tilt = max_tilt``, the
naive draws starting from theta, the sample an error names, logged losses that are checked, and lazy ascent
refreshing after a direction it could not normalise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tiltedsam import TSAM
from tiltedsam.optim.samplers import AscentSampler, HMCSampler
from tiltedsam.optim.tsam import build_sampler
from tiltedsam.tilt import NonFiniteLossError

from conftest import closure_for, tiny_classifier


def _weight(*values: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values))


# ---------------------------------------------------------------- which sampler the arguments build
def test_build_sampler_defaults_to_algorithm_2() -> None:
    sampler = build_sampler()
    assert type(sampler) is AscentSampler
    assert sampler.config() == {"name": "ascent", "noise": "gaussian", "noise_radius": 1.0, "noise_std": 1.0,
                                "direction": "per_sample", "ascent_fraction": 1.0, "refresh_every": 1}


def test_unknown_tsam_setting_is_named() -> None:
    with pytest.raises(TypeError) as raised:
        build_sampler("ascent", None, noise_radius=0.5, jitter=1)
    assert "jitter" in str(raised.value)


def test_sampler_options_reach_the_ascent_samplers() -> None:
    # the ascent samplers take only the top-level settings, so any option given to them is refused, not dropped
    with pytest.raises(TypeError):
        build_sampler("ascent", {"bogus": 1})
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError):
        TSAM(model.parameters(), model=model, parallel_samples=True, sampler_options={"bogus": 1}, lr=0.1)


def test_an_ascent_setting_given_to_another_sampler_names_it_and_the_sampler() -> None:
    with pytest.raises(ValueError) as raised:
        build_sampler(HMCSampler(), None, noise_radius=2.0)
    message = str(raised.value)
    assert "noise_radius=2.0" in message and "sampler='hmc'" in message and "sampler_options" in message


@pytest.mark.parametrize("settings, name", [
    ({"tilt": -1.0}, "tilt"), ({"tilt": "auto", "sample_tilt": -1.0}, "sample_tilt"),
    ({"tilt": 1.0, "sample_tilt": -1.0}, "sample_tilt"), ({"num_samples": 0}, "num_samples"),
])
def test_tsam_bad_setting_message_starts_with_its_name(settings: dict, name: str) -> None:
    with pytest.raises(ValueError) as raised:
        TSAM([_weight(0.0)], lr=0.1, **settings)
    assert str(raised.value).startswith(f"{name} must be ")


def test_auto_tilt_allows_sample_tilt_up_to_the_cap() -> None:
    optimizer = TSAM([_weight(0.0)], lr=0.1, tilt="auto", sample_tilt=5.0, max_tilt=5.0)
    assert optimizer.tilt == 5.0
    with pytest.raises(ValueError) as raised:
        TSAM([_weight(0.0)], lr=0.1, tilt="auto", sample_tilt=5.5, max_tilt=5.0)
    message = str(raised.value)  # the bad value and the bound it breaks
    assert "5.5" in message and "sample_tilt <= max_tilt=5.0" in message


def test_auto_tilt_target_message_names_the_guaranteed_ess_and_the_remedy() -> None:
    with pytest.raises(ValueError) as raised:
        TSAM([_weight(0.0)], lr=0.1, tilt="auto", num_samples=4, target_ess=0.2)
    message = str(raised.value)  # every weighting of 4 samples has ESS >= 1 > 0.2 * 4 = 0.8
    assert "target_ess=0.2" in message and "0.25" in message and "at least 0.8 " in message
    assert "raise target_ess or num_samples" in message


def test_parallel_samples_refusals_name_what_was_given() -> None:
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError) as raised:
        TSAM(model.parameters(), lr=0.1, parallel_samples=True, sampler="hmc", model=model)
    assert "sampler='hmc'" in str(raised.value) and "model=Linear" in str(raised.value)
    with pytest.raises(ValueError) as raised:
        TSAM(model.parameters(), lr=0.1, parallel_samples=True, model=model, ascent_direction="shared")
    assert "parallel_samples=True" in str(raised.value) and "ascent_direction='shared'" in str(raised.value)


def test_parallel_samples_keep_the_noise_settings() -> None:
    model = nn.Linear(2, 1)
    optimizer = TSAM(model.parameters(), lr=0.1, parallel_samples=True, model=model, noise="uniform",
                     noise_radius=0.3, noise_std=0.5)
    assert {k: optimizer.hyperparameters["sampler"][k] for k in ("noise", "noise_radius", "noise_std")} == \
        {"noise": "uniform", "noise_radius": 0.3, "noise_std": 0.5}


# ---------------------------------------------------------------- the adaptive tilt's cap
def test_auto_tilt_with_sample_tilt_at_the_cap_weights_uniformly() -> None:
    # t <= max_tilt and t = tau + delta with delta = max_tilt leave tau = 0: uniform weights, t = max_tilt
    model, x, y = tiny_classifier(seed=1)
    optimizer = TSAM(model.parameters(), lr=0.1, tilt="auto", sample_tilt=3.0, max_tilt=3.0, num_samples=4,
                     noise_radius=0.5, target_ess=0.9, seed=0)
    for _ in range(3):
        optimizer.step(closure_for(model, x, y))
        assert optimizer.last_step.extra["aggregation_tilt"] == 0.0
        assert optimizer.last_step.weights == pytest.approx([0.25] * 4)
        assert len(set(optimizer.last_step.losses)) == 4  # the samples differ: a positive tau would matter
    assert optimizer.tilt == 3.0


# ---------------------------------------------------------------- the step program
def _points_closure(weight: nn.Parameter, points: list, loss_of=lambda w: (w**2).sum()):
    def closure():
        points.append(weight.detach().clone())
        loss = loss_of(weight)
        loss.backward()
        return loss
    return closure


def test_every_naive_sample_starts_from_theta() -> None:
    weight = nn.Parameter(torch.zeros(40))
    optimizer = TSAM([weight], lr=0.0, tilt=1.0, num_samples=4, rho=0.5, sampler="naive", seed=0)
    points: list = []
    optimizer.step(_points_closure(weight, points))
    assert len(points) == 4
    for point in points:  # each eps_j is drawn in the ball around theta = 0, not around the last sample
        assert 0.25 < float(point.norm()) <= 0.5 + 1e-6
    assert torch.equal(weight.detach(), torch.zeros(40))


@pytest.mark.parametrize("sampler", ["naive", "hmc"])
def test_a_non_finite_loss_names_its_sample(sampler: str) -> None:
    weight = _weight(0.5, -0.5)
    optimizer = TSAM([weight], lr=0.1, tilt=1.0, num_samples=3, rho=0.1, sampler=sampler, seed=0)
    calls_per_sample = optimizer.sampler.evaluations_per_sample()
    calls = []

    def closure():
        calls.append(1)
        loss = (weight**2).sum()
        loss.backward()
        return loss * math.nan if len(calls) == calls_per_sample + 1 else loss  # first call of sample 1

    with pytest.raises(NonFiniteLossError) as raised:
        optimizer.step(closure)
    assert "of sample 1 " in str(raised.value)
    assert torch.equal(weight.detach(), torch.tensor([0.5, -0.5]))


def test_a_non_finite_logged_loss_is_checked_too() -> None:
    # the loss at theta + delta_j only chooses the direction and is only logged, but a NaN there is reported
    weight = _weight(0.5, -0.5)

    def closure(evaluation):
        loss = (weight**2).sum()
        loss.backward()
        return loss * math.nan if evaluation.label == "noise" else loss

    optimizer = TSAM([weight], lr=0.1, tilt=1.0, num_samples=2, rho=0.1, noise_radius=0.1, seed=0)
    with pytest.raises(NonFiniteLossError):
        optimizer.step(closure)
    assert torch.equal(weight.detach(), torch.tensor([0.5, -0.5]))
    ignoring = TSAM([weight], lr=0.1, tilt=1.0, num_samples=2, rho=0.1, noise_radius=0.1, seed=0, nonfinite="ignore")
    ignoring.step(closure)
    assert all(math.isnan(v) for v in ignoring.last_step.extra["noise_loss"])


@pytest.mark.parametrize("direction", ["per_sample", "shared"])
def test_lazy_ascent_refreshes_after_a_direction_it_could_not_normalise(direction: str) -> None:
    weight = _weight(0.1, 0.2)
    optimizer = TSAM([weight], lr=0.01, tilt=1.0, num_samples=2, rho=0.1, noise_radius=0.0, refresh_every=3,
                     ascent_direction=direction, seed=0)
    labels: list[list[str]] = []

    def closure(evaluation):
        labels[-1].append(evaluation.label)
        if len(labels) == 1 and evaluation.label != "perturbed":
            loss = (weight * 3e38).sum()  # finite gradient entries whose norm overflows to inf
        else:
            loss = (weight**2).sum()
        loss.backward()
        return loss

    for _ in range(2):
        labels.append([])
        optimizer.step(closure)
    direction_label = "noise" if direction == "per_sample" else "clean"
    assert direction_label in labels[0] and direction_label in labels[1]  # the second step refreshed
    assert optimizer.sampler.directions is not None  # and kept its finite directions


def test_tilt_and_max_tilt_may_not_drop_below_an_explicit_sample_tilt() -> None:
    optimizer = TSAM([_weight(0.0)], lr=0.1, tilt="auto", sample_tilt=2.0, max_tilt=5.0)
    optimizer.max_tilt = 2.0  # t = delta is allowed (tau = 0: uniform weights)
    assert optimizer.max_tilt == 2.0
    with pytest.raises(ValueError) as raised:
        optimizer.max_tilt = 1.5
    assert "max_tilt=1.5" in str(raised.value) and "sample_tilt=2.0" in str(raised.value)
    assert optimizer.max_tilt == 2.0  # a refused value changes nothing
    optimizer.tilt = 3.0  # a fixed t at or above delta switches the rule off
    assert optimizer.tilt == 3.0 and not optimizer.auto_tilt
    with pytest.raises(ValueError, match=r"tilt=1\.0 .*sample_tilt=2\.0"):
        optimizer.tilt = 1.0


def test_switching_auto_back_on_checks_the_cap_against_sample_tilt() -> None:
    optimizer = TSAM([_weight(0.0)], lr=0.1, tilt=3.0, sample_tilt=2.0, max_tilt=5.0)
    optimizer.hyperparameters["max_tilt"] = 1.0  # a cap below delta, as an old state could hold
    with pytest.raises(ValueError, match=r"max_tilt=1\.0 .*sample_tilt=2\.0"):
        optimizer.tilt = "auto"
    assert optimizer.tilt == 3.0
