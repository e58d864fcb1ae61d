"""Bad settings of the naive sampler and the tilt scheduler are refused with a message that starts with
the setting's name; the naive sampler's own radius wins over TSAM's rho."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tiltedsam import TSAM
from tiltedsam.optim.samplers import NaiveSampler, SamplingContext
from tiltedsam.optim.schedules import TiltScheduler


@pytest.mark.parametrize("settings, name", [({"noise": "laplace"}, "noise"), ({"noise_std": 0.0}, "noise_std"),
                                            ({"radius": -1.0}, "radius")])
def test_naive_bad_setting_message_starts_with_its_name(settings: dict, name: str) -> None:
    with pytest.raises(ValueError) as raised:
        NaiveSampler(**settings)
    assert str(raised.value).startswith(f"{name} must be ")


def test_naive_radius_overrides_rho() -> None:
    weights = torch.zeros(50, requires_grad=True)
    ctx = SamplingContext(params=[weights], origin=[torch.zeros(50)], rho=0.01, sample_tilt=0.0,
                          generator=torch.Generator().manual_seed(0), loss_value=float)
    program = NaiveSampler(noise="uniform", radius=0.5).draw(ctx)
    next(program)
    # uniform in the 50-dim ball of radius 0.5: |eps| > 0.5 * 0.9 with probability 1 - 0.9^50 > 0.99
    norm = float(weights.detach().norm())
    assert 0.2 < norm <= 0.5 + 1e-6


def _tsam(**settings):
    return TSAM(nn.Linear(2, 1).parameters(), lr=0.1, **settings)


def test_scheduler_bad_kind_message_starts_with_kind() -> None:
    with pytest.raises(ValueError) as raised:
        TiltScheduler(_tsam(tilt=1.0), kind="zigzag")
    assert str(raised.value).startswith("kind must be ")


def test_scheduler_refuses_an_infinite_cap_for_auto_tilt() -> None:
    with pytest.raises(ValueError) as raised:
        TiltScheduler(_tsam(tilt="auto"), kind="increase", total_steps=5, tilt=math.inf)
    assert str(raised.value) == "tilt (the scheduled cap of a tilt='auto' optimizer) must be finite, got inf"
