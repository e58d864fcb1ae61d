"""One registry and factory for every optimizer: ``create_optimizer(name, params, **kwargs)``.

An entry is an optimizer class plus the settings it fixes; each class declares its own defaults and
gradient evaluations per step (``evaluations_for``), so :func:`equal_compute_steps` can match budgets
(e.g. how many steps ``"esam1"`` runs to spend what TSAM spends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch.optim import Optimizer

from ..functional import check_hyperparameter

from .base import BASE_OPTIMIZERS, PerturbationOptimizer, resolve_base_optimizer
from .erm import ERM
from .esam2 import ESAM2
from .pgn import PGN
from .rsam import RSAM
from .sam import SAM
from .samplers.base import evaluation_count
from .tsam import TSAM

__all__ = ["OptimizerSpec", "REGISTRY", "register", "create_optimizer", "list_optimizers", "grad_evals_per_step",
           "BASE_OPTIMIZERS", "resolve_base_optimizer", "ALIASES", "equal_compute_steps", "budget_multiplier"]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registry entry: an optimizer class with some of its settings fixed (``settings``, e.g. TSAM with
    ``sampler="hmc"``). Its defaults and its gradient evaluations per step are the class's own
    (:meth:`~tiltedsam.optim.base.PerturbationOptimizer.setting_defaults`, ``evaluations_for``)."""

    name: str
    cls: type[PerturbationOptimizer]
    description: str
    settings: dict[str, Any] = field(default_factory=dict)  # what this entry sets differently from the class
    #: name of the optimizer whose compute budget this entry is meant to be given (ESAM1: "tsam")
    budget_reference: str | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """Every own setting of the optimizer with the value this entry uses by default."""
        return {**self.cls.setting_defaults(), **self.settings}

    def evals_for(self, **settings: Any) -> int | float:
        """Gradient evaluations per step with ``settings`` on top of this entry's (full-batch equivalents)."""
        return evaluation_count(self.cls.evaluations_for(**{**self.settings, **settings}))


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
    return spec.cls(params, resolve_base_optimizer(base_optimizer), **{**spec.settings, **kwargs})


def list_optimizers() -> list[dict[str, Any]]:
    """Name, description, default settings (the entry's own settings, ``settings``, and all of the class's
    defaults with them, ``defaults``) and gradient evaluations per step of every optimizer (plus
    ``budget_reference``: the optimizer whose budget it is meant to get, or ``None``)."""
    return [
        {"name": s.name, "description": s.description, "settings": dict(s.settings), "defaults": s.defaults,
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
    check_hyperparameter("reference_steps", reference_steps, integer=True, low=0)
    ratio = budget_multiplier(name, reference=reference, settings=settings, reference_settings=reference_settings,
                              seconds_per_step=seconds_per_step)
    return math.ceil(reference_steps * ratio - 1e-9)


def _register(name: str, cls: type[PerturbationOptimizer], description: str, budget_reference: str | None = None,
              **settings: Any) -> None:
    register(OptimizerSpec(name, cls, description, settings, budget_reference))


_register("sgd", ERM, "ERM: the base optimizer alone (SGD with momentum by default)")
_register("sam", SAM, "SAM (Foret et al. 2021): one normalised ascent step, then descend")
_register("asam", SAM, "ASAM (Kwon et al. 2021): SAM with the ascent scaled by |w| + eta", rho=0.5, adaptive=True)
_register("tsam", TSAM, "TSAM (Algorithm 1 + 2): tilted average of s perturbed gradients")
_register("tsam-hmc", TSAM, "TSAM with the exact HMC sampler of Eq. 11 (leapfrog, Metropolis, ball reflection)",
          sampler="hmc")
_register("tsam-naive", TSAM, "TSAM with naive sampling (App. C.3, Eq. 75): eps ~ uniform ball, weights exp(tL)",
          sampler="naive", num_samples=6)
# the cheap ways to draw TSAM's samples (docs/cost.md); s = 3 as the default TSAM
_register("tsam-shared", TSAM, "TSAM, one shared ascent direction from grad L(theta): s + 1 evaluations",
          ascent_direction="shared")
_register("tsam-subbatch", TSAM, "TSAM, ascent gradients on a fraction f of the batch: s (1 + f) evaluation-equivalents",
          ascent_fraction=0.25)
_register("tsam-lazy", TSAM, "TSAM, ascent directions recomputed every k steps: s (1 + 1/k) evaluations",
          refresh_every=5)
_register("tsam-shared-lazy", TSAM, "TSAM, one shared ascent direction recomputed every k steps: s + 1/k evaluations",
          ascent_direction="shared", refresh_every=5)
_register("esam1", SAM, "ESAM1: plain SAM run for more steps, to TSAM's budget (equal_compute_steps)",
          budget_reference="tsam")
_register("esam2", ESAM2, "ESAM2: SAM trying several ascent step sizes, stepping at the largest loss")
_register("pgn", PGN, "PGN (Zhao et al. 2022): (1-alpha) grad L(theta) + alpha grad L(theta + r g/|g|)")
_register("rsam", RSAM, "RSAM (Liu et al. 2022): filter-wise random noise, then SAM along lambda*g + noise")
