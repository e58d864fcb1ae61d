"""One registry and factory for every optimizer: ``create_optimizer(name, params, **kwargs)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.optim import Optimizer

from ..samplers import Sampler, make_sampler
from .base import PerturbationOptimizer
from .erm import ERM
from .sam import SAM
from .tsam import TSAM

__all__ = ["OptimizerSpec", "REGISTRY", "register", "create_optimizer", "list_optimizers", "grad_evals_per_step",
           "BASE_OPTIMIZERS", "resolve_base_optimizer"]

BASE_OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def resolve_base_optimizer(base: str | type[Optimizer]) -> type[Optimizer]:
    if isinstance(base, str):
        if base.lower() not in BASE_OPTIMIZERS:
            raise ValueError(f"unknown base optimizer {base!r}; known: {sorted(BASE_OPTIMIZERS)}")
        return BASE_OPTIMIZERS[base.lower()]
    if isinstance(base, type) and issubclass(base, Optimizer):
        return base
    raise TypeError(f"base optimizer must be a name {sorted(BASE_OPTIMIZERS)} or an Optimizer class, got {base!r}")


@dataclass(frozen=True)
class OptimizerSpec:
    """A registry entry."""

    name: str
    cls: type[PerturbationOptimizer]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)  # the optimizer's own settings by default
    #: gradient evaluations per step as a function of the (merged) settings
    grad_evals: Callable[[dict[str, Any]], int] = lambda settings: 1

    def evals_for(self, **settings: Any) -> int:
        return int(self.grad_evals({**self.defaults, **settings}))


REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def create_optimizer(name: str, params: Any, *, base_optimizer: str | type[Optimizer] = "sgd",
                     **kwargs: Any) -> PerturbationOptimizer:
    """Build a registered optimizer by name.

    ``kwargs`` are the optimizer's own settings (``tilt``, ``rho``, ...; registry defaults fill the
    rest) plus the base optimizer's (``lr``, ``momentum``, ``weight_decay``, ...).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {sorted(REGISTRY)}")
    spec = REGISTRY[key]
    settings = {**spec.defaults, **kwargs}
    return spec.cls(params, resolve_base_optimizer(base_optimizer), **settings)


def list_optimizers() -> list[dict[str, Any]]:
    """Name, description, default settings and gradient evaluations per step of every optimizer."""
    return [
        {"name": s.name, "description": s.description, "defaults": dict(s.defaults), "grad_evals_per_step": s.evals_for()}
        for s in REGISTRY.values()
    ]


def grad_evals_per_step(name: str, **settings: Any) -> int:
    """Gradient evaluations per step of optimizer ``name`` with these settings (for compute budgets)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {sorted(REGISTRY)}")
    return REGISTRY[name].evals_for(**settings)


def _tsam_evals(settings: dict[str, Any]) -> int:
    sampler = settings.get("sampler", "ascent")
    if not isinstance(sampler, Sampler):
        options = dict(settings.get("sampler_options") or {})
        sampler = make_sampler(sampler, **options)
    return int(settings.get("num_samples", 3)) * sampler.evaluations_per_sample()


register(OptimizerSpec("sgd", ERM, "ERM: the base optimizer alone (SGD with momentum by default)", {}, lambda s: 1))
register(OptimizerSpec("sam", SAM, "SAM (Foret et al. 2021): one normalised ascent step, then descend", {"rho": 0.05},
                       lambda s: 2))
register(OptimizerSpec("asam", SAM, "ASAM (Kwon et al. 2021): SAM with the ascent scaled by |w| + eta",
                       {"rho": 0.5, "adaptive": True}, lambda s: 2))
register(OptimizerSpec("tsam", TSAM, "TSAM (Algorithm 1 + 2): tilted average of s perturbed gradients",
                       {"tilt": 20.0, "num_samples": 3, "rho": 0.05},
                       lambda s: _tsam_evals(s)))
