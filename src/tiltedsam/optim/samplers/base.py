"""How TSAM draws its perturbations: the sampler strategy interface.

TSAM's default sampler (:class:`~.ascent.AscentSampler`) is drawn inline in TSAM's step program; the
object holds its settings, cost and state. Another strategy (HMC, naive) moves from ``theta``
(``ctx.origin``) to one point ``theta + eps_j`` in :meth:`Sampler.draw`, a generator like the
optimizers' step program: it ``yield``s a :class:`~tiltedsam.optim.base.Request` whenever it needs the
loss and gradient at the current parameters and receives the loss (the gradient is then in ``p.grad``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import torch
from torch import Tensor

__all__ = ["Sampler", "SamplingContext", "DrawResult", "evaluation_count"]

#: What :meth:`Sampler.draw` returns: the loss at ``theta + eps_j`` and the gradient there (one entry
#: per parameter, ``None`` where a parameter got no gradient).
DrawResult = tuple[float, list[Tensor | None]]


def evaluation_count(value: float) -> int | float:
    """An evaluation count as an ``int`` when it is whole (``6``), else the float (``3.6``)."""
    value = float(value)
    return int(value) if value.is_integer() else value


@dataclass
class SamplingContext:
    """Everything a sampler may use during one optimizer step."""

    params: list[Tensor]  # the live parameters (moved in place)
    origin: list[Tensor]  # the snapshot of theta taken at the start of the step
    rho: float  # radius of the perturbation ball ||eps|| <= rho
    sample_tilt: float  # delta in Algorithm 1: the sampler targets p(eps) ~ exp(delta * L(theta + eps))
    generator: torch.Generator  # the optimizer's noise generator (seeded, saved in state_dict)
    loss_value: Callable[[Any], float]  # turns a received loss into a float (all-reduced under DDP)
    # for losses that are only logged: this rank's value, no communication under DDP
    local_loss_value: Callable[[Any], float] = float
    diagnostics: dict[str, list[Any]] = field(default_factory=dict)  # per-sample extras for logging

    def record(self, key: str, value: Any) -> None:
        self.diagnostics.setdefault(key, []).append(value)

    def grads(self) -> list[Tensor | None]:
        return [p.grad for p in self.params]


class Sampler:
    """Base class of perturbation samplers (strategies that TSAM takes as ``sampler=``)."""

    #: registry name
    name: str = "base"
    #: ``True`` when the samples follow ``p(eps) ~ exp(delta L(theta + eps))`` (Algorithm 1), so TSAM
    #: weights them by ``exp((t - delta) L)``; ``False`` when they follow ``mu`` itself (the naive
    #: sampler, Eq. 75), so TSAM weights them by ``exp(t L)``, i.e. ``delta = 0``.
    targets_tilted_density: bool = True

    def evaluations_per_sample(self) -> int:
        """Loss/gradient evaluations one call of :meth:`draw` makes."""
        raise NotImplementedError

    def evaluations_per_step(self, num_samples: int) -> int | float:
        """Cost of one TSAM step of ``num_samples`` draws, averaged over steps, in gradient-evaluation
        equivalents (one forward/backward on the whole mini-batch = 1; one on a fraction ``f`` of it = ``f``).
        This is what compute budgets use; it may be fractional."""
        return num_samples * self.evaluations_per_sample()

    def evaluations_next_step(self, num_samples: int) -> int | float:
        """The exact cost of the *next* step (differs from :meth:`evaluations_per_step` for samplers whose
        cost varies from step to step, e.g. lazy ascent)."""
        return self.evaluations_per_step(num_samples)

    def state_dict(self) -> dict[str, Any]:
        """State carried from step to step (saved in the optimizer's ``state_dict``); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    #: whether some of its evaluations only set the ascent direction (m-sharpness under DDP)
    has_ascent_only_evaluations: bool = False

    def draw(self, ctx: SamplingContext) -> Generator[Any, Any, DrawResult]:
        """Move to ``theta + eps_j``, yielding for each evaluation; return its loss and gradient."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Settings, for logging and ``state_dict``."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"
