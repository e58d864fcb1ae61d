"""The label-noise study's manipulation-check measures: L^t and the (t-weighted) variance of a loss sample."""

import importlib.util
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "label_noise_study", Path(__file__).resolve().parents[1] / "studies" / "label_noise" / "study.py")
study = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(study)


def test_tilted_statistics_hand_values():
    losses = [1.0, 2.0, 4.0]
    zero = study.tilted_statistics(losses, 0.0)
    assert zero["tilted_loss"] == pytest.approx(7 / 3)
    assert zero["variance"] == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 3)
    t = 0.5
    weights = [math.exp(t * x) for x in losses]
    total = sum(weights)
    mean = sum(w * x for w, x in zip(weights, losses)) / total
    tilted = study.tilted_statistics(losses, t)
    assert tilted["tilted_loss"] == pytest.approx(math.log(total / 3) / t)
    assert tilted["tilted_variance"] == pytest.approx(sum(w * (x - mean) ** 2 for w, x in zip(weights, losses)) / total)
    # L^t is non-decreasing in t and tends to the max
    assert zero["tilted_loss"] < tilted["tilted_loss"] < study.tilted_statistics(losses, 50.0)["tilted_loss"] < 4.0
