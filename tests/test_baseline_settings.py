"""Settings of the baselines and of the tilt scheduler: per-group SAM settings reach the update (checked
against a hand-computed step), the points ESAM2 asks for, what ERM checks, and the scheduler's errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tiltedsam.optim import ERM, ESAM2, RSAM, SAM, TSAM, TiltScheduler
from tiltedsam.optim.base import Point


def _quadratic_step(optimizer: SAM, weight: nn.Parameter) -> float:
    """One step on L(w) = w^2 / 2 (gradient w) from w = [1]."""
    def closure():
        loss = 0.5 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.item()


def test_sam_group_settings_given_in_every_group_are_used():
    # e = rho g/|g| = rho; grad at 1 + rho is 1 + rho; w <- 1 - lr (1 + rho) with the group's rho = 0.5
    weight = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    group = {"params": [weight], "rho": 0.5, "adaptive": False, "adaptive_eta": 0.01}
    optimizer = SAM([group], torch.optim.SGD, lr=0.1, rho=0.05)
    assert _quadratic_step(optimizer, weight) == pytest.approx(1.0 - 0.1 * 1.5, rel=1e-12)


def test_sam_takes_a_per_group_adaptive_flag_of_either_value():
    weight = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    SAM([{"params": [weight], "adaptive": False}], torch.optim.SGD, lr=0.1)
    SAM([{"params": [weight], "adaptive": True}], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError) as excinfo:
        SAM([{"params": [weight], "adaptive": 1}], torch.optim.SGD, lr=0.1)
    assert "adaptive (param group 0) must be True or False, got 1" in str(excinfo.value)


def test_esam2_evaluates_its_step_sizes_at_perturbed_points():
    weight = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = ESAM2([weight], torch.optim.SGD, lr=0.1, rho=0.1, multipliers=(1.0, 2.0))
    seen = []
    for evaluation in optimizer.manual_step():
        seen.append((evaluation.request.point, evaluation.label))
        loss = 0.5 * (weight**2).sum()
        loss.backward()
        evaluation.record(loss)
    assert seen == [(Point.CLEAN, "clean"), (Point.PERTURBED, "step_size_0"), (Point.PERTURBED, "step_size_1")]


def test_erm_checks_its_model_argument():
    model = nn.Linear(2, 1)
    assert ERM(model.parameters(), torch.optim.SGD, lr=0.1, model=model).model is model
    with pytest.raises(TypeError) as excinfo:
        ERM(model.parameters(), torch.optim.SGD, lr=0.1, model="net")
    assert "model must be a torch.nn.Module or None, got str" in str(excinfo.value)


def test_the_tilt_scheduler_names_a_bad_kind_and_an_infinite_cap():
    weight = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError) as excinfo:
        TiltScheduler(TSAM([weight], torch.optim.SGD, lr=0.1), kind="wavy", total_steps=10)
    assert str(excinfo.value).startswith("kind must be one of") and "'wavy'" in str(excinfo.value)
    auto = TSAM([weight], torch.optim.SGD, lr=0.1, tilt="auto")
    with pytest.raises(ValueError) as excinfo:
        TiltScheduler(auto, kind="constant", total_steps=10, tilt=math.inf)
    assert str(excinfo.value).startswith("tilt (the scheduled cap of a tilt='auto' optimizer) must be finite")


def test_pgn_normalises_a_tiny_clean_gradient_by_its_norm_plus_epsilon():
    # L(w) = c w with c = 1e-13: both gradients are c, ||g_clean|| = c; with lr = 1 the step is
    # (1 - alpha) c / (c + 1e-12) + alpha c  (normalize_clean=True)
    from tiltedsam.optim import PGN

    c, alpha = 1e-13, 0.5
    weight = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = PGN([weight], torch.optim.SGD, lr=1.0, rho=0.1, alpha=alpha, normalize_clean=True)

    def closure():
        loss = c * weight.sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    expected = -((1 - alpha) * c / (c + 1e-12) + alpha * c)
    assert weight.item() == pytest.approx(expected, rel=1e-9)


def test_rsam_accepts_any_non_negative_gradient_weight():
    weight = nn.Parameter(torch.ones(2))
    for grad_weight in (0.0, 0.5):  # lambda >= 0: below the authors' 2 as well
        assert RSAM([weight], lr=0.1, grad_weight=grad_weight).hyperparameters["grad_weight"] == grad_weight
