"""Settings an optimizer cannot honour are refused with a message naming them, never silently ignored."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tiltedsam import TSAM, create_optimizer, list_optimizers

NAMES = [entry["name"] for entry in list_optimizers()]


@pytest.mark.parametrize("sampler", ["naive", "hmc"])
@pytest.mark.parametrize("setting", [{"noise_radius": 5.0}, {"noise_std": 2.0}, {"noise": "uniform"}])
def test_noise_settings_of_the_ascent_sampler_are_refused_by_the_other_samplers(sampler, setting) -> None:
    (key, value), = setting.items()
    with pytest.raises(ValueError, match=rf"{key}={value!r} applies to the 'ascent' sampler only, "
                                         rf"got sampler='{sampler}'"):
        TSAM(nn.Linear(2, 1).parameters(), lr=0.1, sampler=sampler, **setting)
    # the default values are no request: the other samplers build as before
    assert TSAM(nn.Linear(2, 1).parameters(), lr=0.1, sampler=sampler).sampler.name == sampler


def test_auto_tilt_refuses_a_target_ess_every_weighting_meets() -> None:
    """ESS >= 1 for any weights, so target_ess * s <= 1 would make the rule return max_tilt on every step."""
    params = list(nn.Linear(2, 1).parameters())
    with pytest.raises(ValueError, match=r"num_samples=2 needs target_ess > 1/num_samples = 0.5, got target_ess=0.5"):
        TSAM(params, lr=0.1, tilt="auto", num_samples=2)
    with pytest.raises(ValueError, match=r"target_ess > 1/num_samples = 0.25, got target_ess=0.2"):
        TSAM(params, lr=0.1, tilt="auto", num_samples=4, target_ess=0.2)
    fixed = TSAM(params, lr=0.1, tilt=5.0, num_samples=2)  # the rule is off: nothing to refuse
    with pytest.raises(ValueError, match=r"target_ess > 1/num_samples"):
        fixed.tilt = "auto"  # switching the rule on checks it then
    assert fixed.tilt == 5.0
    assert TSAM(params, lr=0.1, tilt="auto", num_samples=2, target_ess=0.6).auto_tilt
    assert TSAM(params, lr=0.1, tilt="auto", num_samples=1).auto_tilt  # one sample: nothing to weight


def _quadratic_closure(params):
    def closure():
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss
    return closure


def test_an_unknown_setting_is_named_with_the_settings_that_exist() -> None:
    with pytest.raises(TypeError, match=r"unknown setting\(s\) 'tilte' for TSAM on base optimizer SGD; TSAM takes "
                                        r".*\btilt\b.*; SGD takes .*\bmomentum\b"):
        TSAM(nn.Linear(2, 1).parameters(), lr=0.1, tilte=3)
    with pytest.raises(TypeError, match=r"'rh0' for SAM on base optimizer Adam"):
        create_optimizer("sam", nn.Linear(2, 1).parameters(), base_optimizer="adam", lr=0.1, rh0=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_a_string_learning_rate_is_named(name) -> None:
    with pytest.raises(TypeError, match=r"^lr must be a real number, got '0.1'$"):
        create_optimizer(name, nn.Linear(2, 1).parameters(), lr="0.1")
    with pytest.raises(TypeError, match=r"^momentum must be a real number, got '0.9'$"):
        create_optimizer(name, nn.Linear(2, 1).parameters(), lr=0.1, momentum="0.9")


@pytest.mark.parametrize("name", NAMES)
def test_an_optimizer_over_frozen_parameters_only_says_so(name) -> None:
    model = nn.Linear(2, 1).requires_grad_(False)
    optimizer = create_optimizer(name, model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"none of its 2 parameters requires a gradient"):
        optimizer.step(_quadratic_closure(list(model.parameters())))
    assert optimizer.step_count == 0


def test_the_tilt_a_step_used_is_public() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)

    def closure():
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    fixed = TSAM(model.parameters(), lr=0.01, tilt=7.0, seed=0)
    fixed.step(closure)
    assert fixed.last_step.tilt == 7.0
    auto = TSAM(model.parameters(), lr=0.01, tilt="auto", seed=0)
    auto.step(closure)
    assert auto.last_step.tilt == 0.0  # the first step is uniform
    chosen = auto.tilt  # the rule's t for the next step
    assert chosen > 0 and math.isfinite(chosen)
    auto.step(closure)
    assert auto.last_step.tilt == chosen == auto.last_step.extra["tilt"]
    assert create_optimizer("sam", model.parameters(), lr=0.1).last_step.tilt is None


def test_erm_is_a_name_of_the_base_optimizer_everywhere() -> None:
    from tiltedsam import ERM, equal_compute_steps, grad_evals_per_step
    from tiltedsam.optim.registry import budget_multiplier

    assert type(create_optimizer("erm", nn.Linear(2, 1).parameters(), lr=0.1)) is ERM
    assert grad_evals_per_step("erm") == grad_evals_per_step("sgd") == 1
    assert budget_multiplier("erm", reference="tsam") == 6.0  # TSAM's default: s = 3 samples, 2 evaluations each
    assert equal_compute_steps("erm", 10, reference="tsam") == 60
