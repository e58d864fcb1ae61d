"""t schedules (Fig. 4): constant, linear increase 0 -> t, linear decrease t -> 0, like an LR scheduler."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tiltedsam import TSAM, create_optimizer
from tiltedsam.optim import TiltScheduler
from tiltedsam.optim.schedules import scheduled_tilt


def _tsam(**settings) -> tuple[TSAM, nn.Module]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    return TSAM(model.parameters(), lr=0.05, num_samples=2, **settings), model


def _tilts_seen(kind: str, total: int, target: float = 20.0) -> list[float]:
    """The tilt the optimizer holds at each of ``total`` steps (read when the step would run)."""
    optimizer, _ = _tsam(tilt=7.0)
    scheduler = TiltScheduler(optimizer, kind, total_steps=total, tilt=target)
    seen = []
    for _ in range(total):
        seen.append(optimizer.tilt)
        assert scheduler.get_last_tilt() == optimizer.tilt
        scheduler.step()
    return seen


@pytest.mark.parametrize("kind, first, middle, last", [
    ("constant", 20.0, 20.0, 20.0), ("increase", 0.0, 10.0, 20.0), ("decrease", 20.0, 10.0, 0.0),
])
def test_first_middle_and_last_step(kind: str, first: float, middle: float, last: float) -> None:
    seen = _tilts_seen(kind, total=11)
    assert seen[0] == pytest.approx(first)
    assert seen[5] == pytest.approx(middle)
    assert seen[-1] == pytest.approx(last)
    steps = [b - a for a, b in zip(seen, seen[1:])]
    assert all(d == pytest.approx(steps[0]) for d in steps)  # linear


def test_final_value_is_held_after_the_schedule() -> None:
    assert scheduled_tilt("increase", 50, 10, 4.0) == 4.0
    assert scheduled_tilt("decrease", 50, 10, 4.0) == 0.0
    assert scheduled_tilt("increase", 0, 1, 4.0) == 4.0


def test_default_target_is_the_optimizer_tilt_and_sample_tilt_follows() -> None:
    optimizer, _ = _tsam(tilt=8.0)
    scheduler = TiltScheduler(optimizer, "decrease", total_steps=3)
    assert optimizer.tilt == 8.0 and optimizer.sample_tilt == 4.0  # delta = t / 2 follows
    scheduler.step()
    assert optimizer.tilt == 4.0 and optimizer.sample_tilt == 2.0


def test_the_scheduled_tilt_is_used_by_the_step() -> None:
    optimizer, model = _tsam(tilt=1.0)
    x, y = torch.randn(16, 3), torch.randn(16, 1)

    def closure() -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    scheduler = TiltScheduler(optimizer, "increase", total_steps=3, tilt=30.0)
    recorded = []
    for _ in range(3):
        optimizer.step(closure)
        recorded.append(optimizer.last_step.extra["tilt"])
        scheduler.step()
    assert recorded == pytest.approx([0.0, 15.0, 30.0])


def test_state_dict_round_trip() -> None:
    optimizer, _ = _tsam(tilt=5.0)
    scheduler = TiltScheduler(optimizer, "increase", total_steps=9, tilt=16.0)
    for _ in range(4):
        scheduler.step()
    saved = scheduler.state_dict()
    other_optimizer, _ = _tsam(tilt=5.0)
    other = TiltScheduler(other_optimizer, "constant", total_steps=1)
    other.load_state_dict(saved)
    assert other_optimizer.tilt == optimizer.tilt == pytest.approx(8.0)
    scheduler.step()
    other.step()
    assert other.get_last_tilt() == scheduler.get_last_tilt() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="TiltScheduler"):
        other.load_state_dict({"kind": "increase"})


def test_bad_arguments() -> None:
    optimizer, _ = _tsam(tilt=5.0)
    with pytest.raises(ValueError, match="kind"):
        TiltScheduler(optimizer, "cosine", total_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        TiltScheduler(optimizer, "increase", total_steps=0)
    with pytest.raises(ValueError, match="tilt"):
        TiltScheduler(optimizer, "increase", total_steps=10, tilt=-1.0)
    with pytest.raises(ValueError, match="kind='constant'"):
        TiltScheduler(optimizer, "increase", total_steps=10, tilt=math.inf)
    with pytest.raises(ValueError, match="'tilt'"):
        TiltScheduler(create_optimizer("sam", nn.Linear(2, 1).parameters(), lr=0.1), "constant", 5)


def test_explicit_sample_tilt_above_the_schedule_is_rejected() -> None:
    optimizer, _ = _tsam(tilt=10.0, sample_tilt=3.0)
    with pytest.raises(ValueError, match="sample_tilt"):
        TiltScheduler(optimizer, "increase", total_steps=10)
    with pytest.raises(ValueError, match="sample_tilt"):
        TiltScheduler(optimizer, "constant", total_steps=10, tilt=2.0)
    scheduler = TiltScheduler(optimizer, "constant", total_steps=10, tilt=4.0)  # delta = 3 <= 4: fine
    assert scheduler.get_last_tilt() == 4.0
    zero_delta, _ = _tsam(tilt=10.0, sample_tilt=0.0)
    TiltScheduler(zero_delta, "decrease", total_steps=10)  # delta = 0 never exceeds t
