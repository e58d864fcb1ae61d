"""Registry entries keep exactly what they were registered with: name, class, description, the
settings they fix and their budget reference."""

from __future__ import annotations

import pytest

from tiltedsam.optim import registry
from tiltedsam.optim.registry import OptimizerSpec
from tiltedsam.optim.sam import SAM


def test_register_helper_stores_every_field(monkeypatch) -> None:
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))  # leave the real registry untouched
    registry._register("sam-test-entry", SAM, "SAM with a wide ball", "sam", rho=0.2, adaptive=True)
    spec = registry.REGISTRY["sam-test-entry"]
    assert isinstance(spec, OptimizerSpec)
    assert (spec.name, spec.cls, spec.description, spec.settings, spec.budget_reference) == (
        "sam-test-entry", SAM, "SAM with a wide ball", {"rho": 0.2, "adaptive": True}, "sam")
    registry._register("sam-test-plain", SAM, "plain")
    plain = registry.REGISTRY["sam-test-plain"]
    assert plain.settings == {} and plain.budget_reference is None
    with pytest.raises(ValueError, match="already registered"):
        registry._register("sam-test-plain", SAM, "again")
