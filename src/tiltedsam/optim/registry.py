"""One registry and factory for every optimizer: ``create_optimizer(name, params, **kwargs)``.

Every entry declares its gradient evaluations per step, so budgets can be matched across
optimizers: :func:`equal_compute_steps` gives the number of steps an optimizer (e.g. ``"esam1"``,
plain SAM) must run to spend what a reference (TSAM) spends in a given number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import math

from torch.optim import Optimizer

from ..samplers.base import evaluation_count
from .base import BASE_OPTIMIZERS, PerturbationOptimizer
from .base import resolve_base_optimizer as _resolve_base
from .erm import ERM
from .esam2 import ESAM2
from .pgn import PGN
from .rsam import RSAM
from .sam import SAM
from .tsam import ASCENT_SETTINGS, TSAM, build_sampler

__all__ = ["OptimizerSpec", "REGISTRY", "register", "create_optimizer", "list_optimizers", "grad_evals_per_step",
           "BASE_OPTIMIZERS", "resolve_base_optimizer", "ALIASES", "equal_compute_steps", "budget_multiplier"]

def resolve_base_optimizer(base: str | type[Optimizer]) -> type[Optimizer]:
    """A base optimizer name or class -> its class (the names of :data:`BASE_OPTIMIZERS`, shared with the
    optimizers' own constructors through :func:`tiltedsam.optim.base.resolve_base_optimizer`)."""
    resolved = _resolve_base(base)
    if isinstance(resolved, type) and issubclass(resolved, Optimizer):
        return resolved
    raise TypeError(f"base optimizer must be a name {sorted(BASE_OPTIMIZERS)} or an Optimizer class, got {base!r}")


@dataclass(frozen=True)
class OptimizerSpec:
    """A registry entry."""

    name: str
    cls: type[PerturbationOptimizer]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)  # the optimizer's own settings by default
    #: gradient evaluations per step (full-batch equivalents, averaged over steps; may be fractional)
    #: as a function of the (merged) settings
    grad_evals: Callable[[dict[str, Any]], int | float] = lambda settings: 1
    #: name of the optimizer whose compute budget this entry is meant to be given (ESAM1: "tsam")
    budget_reference: str | None = None

    def evals_for(self, **settings: Any) -> int | float:
        return evaluation_count(self.grad_evals({**self.defaults, **settings}))


REGISTRY: dict[str, OptimizerSpec] = {}
#: other accepted names -> registry name (not listed separately)
ALIASES: dict[str, str] = {"erm": "sgd"}


def _spec(name: Any) -> OptimizerSpec:
    key = name.lower() if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in REGISTRY:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {sorted(REGISTRY)} (aliases: {ALIASES})")
    return REGISTRY[key]


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
    spec = _spec(name)
    settings = {**spec.defaults, **kwargs}
    return spec.cls(params, resolve_base_optimizer(base_optimizer), **settings)


def list_optimizers() -> list[dict[str, Any]]:
    """Name, description, default settings and gradient evaluations per step of every optimizer
    (plus ``budget_reference``: the optimizer whose budget it is meant to get, or ``None``)."""
    return [
        {"name": s.name, "description": s.description, "defaults": dict(s.defaults),
         "grad_evals_per_step": s.evals_for(), "budget_reference": s.budget_reference}
        for s in REGISTRY.values()
    ]


def grad_evals_per_step(name: str, **settings: Any) -> int | float:
    """Gradient evaluations per step of optimizer ``name`` with these settings (for compute budgets): an
    ``int``, or a float for TSAM's sub-batch / lazy ascent (full-batch equivalents averaged over steps)."""
    return _spec(name).evals_for(**settings)


def budget_multiplier(name: str, *, reference: str | None = None, settings: dict[str, Any] | None = None,
                      reference_settings: dict[str, Any] | None = None,
                      seconds_per_step: tuple[float, float] | None = None) -> float:
    """How many steps of ``name`` cost one step of ``reference``.

    By gradient evaluations: ``evals(reference) / evals(name)`` (ESAM1 vs default TSAM: 6 / 2 = 3).
    By wall time: pass measured ``seconds_per_step = (seconds of name, seconds of reference)``.
    ``reference`` defaults to the entry's ``budget_reference`` (``"tsam"`` for ``"esam1"``).
    """
    spec = _spec(name)
    ref = reference if reference is not None else spec.budget_reference
    if ref is None:
        raise ValueError(f"reference must be given: optimizer {spec.name!r} has no budget_reference")
    ref_spec = _spec(ref)
    if seconds_per_step is not None:
        own, other = (float(x) for x in seconds_per_step)
        if not (own > 0 and other > 0 and math.isfinite(own) and math.isfinite(other)):
            raise ValueError(f"seconds_per_step must be two finite numbers > 0, got {seconds_per_step!r}")
        return other / own
    return ref_spec.evals_for(**(reference_settings or {})) / spec.evals_for(**(settings or {}))


def equal_compute_steps(name: str, reference_steps: int, *, reference: str | None = None,
                        settings: dict[str, Any] | None = None, reference_settings: dict[str, Any] | None = None,
                        seconds_per_step: tuple[float, float] | None = None) -> int:
    """Steps optimizer ``name`` runs to spend the budget ``reference`` spends in ``reference_steps`` steps.

    ``ceil(reference_steps * budget_multiplier(...))``: "run SAM until it reaches TSAM's compute"
    (ESAM1, Sec. 5.1). For ``"esam1"`` against TSAM with ``s = 3`` (Algorithm 2, 6 evaluations per
    step) that is three times as many steps (App. C.2, Table 4). See :func:`budget_multiplier`.
    """
    if isinstance(reference_steps, bool) or not isinstance(reference_steps, int) or reference_steps < 0:
        raise ValueError(f"reference_steps must be an integer >= 0, got {reference_steps!r}")
    ratio = budget_multiplier(name, reference=reference, settings=settings, reference_settings=reference_settings,
                              seconds_per_step=seconds_per_step)
    return math.ceil(reference_steps * ratio - 1e-9)


def _tsam_evals(settings: dict[str, Any]) -> int | float:
    ascent = {key: settings[key] for key in ASCENT_SETTINGS if key in settings}
    sampler = build_sampler(settings.get("sampler", "ascent"), settings.get("sampler_options"), **ascent)
    return sampler.evaluations_per_step(int(settings.get("num_samples", 3)))


register(OptimizerSpec("sgd", ERM, "ERM: the base optimizer alone (SGD with momentum by default)", {}, lambda s: 1))
register(OptimizerSpec("sam", SAM, "SAM (Foret et al. 2021): one normalised ascent step, then descend", {"rho": 0.05},
                       lambda s: 2))
register(OptimizerSpec("asam", SAM, "ASAM (Kwon et al. 2021): SAM with the ascent scaled by |w| + eta",
                       {"rho": 0.5, "adaptive": True}, lambda s: 2))
register(OptimizerSpec("tsam", TSAM, "TSAM (Algorithm 1 + 2): tilted average of s perturbed gradients",
                       {"tilt": 20.0, "num_samples": 3, "rho": 0.05},
                       lambda s: _tsam_evals(s)))
register(OptimizerSpec("tsam-hmc", TSAM, "TSAM with the exact HMC sampler of Eq. 11 (leapfrog, Metropolis, ball reflection)",
                       {"tilt": 20.0, "num_samples": 3, "rho": 0.05, "sampler": "hmc"},
                       lambda s: _tsam_evals(s)))
register(OptimizerSpec("tsam-naive", TSAM, "TSAM with naive sampling (App. C.3, Eq. 75): eps ~ uniform ball, weights exp(tL)",
                       {"tilt": 20.0, "num_samples": 6, "rho": 0.05, "sampler": "naive"},
                       lambda s: _tsam_evals(s)))
# the cheap ways to draw TSAM's samples (issue 13, docs/cost.md); s = 3 as the default TSAM
register(OptimizerSpec("tsam-shared", TSAM, "TSAM, one shared ascent direction from grad L(theta): s + 1 evaluations",
                       {"tilt": 20.0, "num_samples": 3, "rho": 0.05, "ascent_direction": "shared"},
                       lambda s: _tsam_evals(s)))
register(OptimizerSpec("tsam-subbatch", TSAM,
                       "TSAM, ascent gradients on a fraction f of the batch: s (1 + f) evaluation-equivalents",
                       {"tilt": 20.0, "num_samples": 3, "rho": 0.05, "ascent_fraction": 0.25},
                       lambda s: _tsam_evals(s)))
register(OptimizerSpec("tsam-lazy", TSAM, "TSAM, ascent directions recomputed every k steps: s (1 + 1/k) evaluations",
                       {"tilt": 20.0, "num_samples": 3, "rho": 0.05, "refresh_every": 5},
                       lambda s: _tsam_evals(s)))
register(OptimizerSpec("tsam-shared-lazy", TSAM,
                       "TSAM, one shared ascent direction recomputed every k steps: s + 1/k evaluations",
                       {"tilt": 20.0, "num_samples": 3, "rho": 0.05, "ascent_direction": "shared", "refresh_every": 5},
                       lambda s: _tsam_evals(s)))
register(OptimizerSpec("esam1", SAM, "ESAM1: plain SAM run for more steps, to TSAM's budget (equal_compute_steps)",
                       {"rho": 0.05}, lambda s: 2, budget_reference="tsam"))
register(OptimizerSpec("esam2", ESAM2, "ESAM2: SAM trying several ascent step sizes, stepping at the largest loss",
                       {"rho": 0.05, "multipliers": (0.5, 1.0, 1.5, 2.0, 2.5)},
                       lambda s: 1 + len(s["multipliers"]) if isinstance(s.get("multipliers"), (list, tuple)) else 1))
register(OptimizerSpec("pgn", PGN, "PGN (Zhao et al. 2022): (1-alpha) grad L(theta) + alpha grad L(theta + r g/|g|)",
                       {"rho": 0.1, "alpha": 0.8}, lambda s: 2))
register(OptimizerSpec("rsam", RSAM, "RSAM (Liu et al. 2022): filter-wise random noise, then SAM along lambda*g + noise",
                       {"rho": 0.05, "noise_scale": 1e-3, "grad_weight": 2.0}, lambda s: 2))
