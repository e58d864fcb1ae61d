"""Algorithm 2 of the TSAM paper: random noise, then one normalised gradient-ascent step — plus its
cheaper variants (shared direction, sub-batch ascent, lazy ascent)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ...functional import NOISE_KINDS, check_hyperparameter, draw_noise
from ..base import Point, Request
from .base import Sampler, evaluation_count

__all__ = ["AscentSampler", "ASCENT_DIRECTIONS"]

#: ``"per_sample"``: Algorithm 2 (one ascent gradient per sample); ``"shared"``: one at ``theta`` for all.
ASCENT_DIRECTIONS = ("per_sample", "shared")


class AscentSampler(Sampler):
    r"""The cheap sampler of Algorithm 2 (used in all of the paper's main experiments), and cheaper variants.

    The draw itself is written inline in TSAM's step program (:meth:`tiltedsam.optim.TSAM._program`);
    this object holds the settings, the requests, the cost and the lazy variant's kept directions.

    **Default** (``direction="per_sample"``, ``ascent_fraction=1``, ``refresh_every=1``): for each sample ``j``

    .. math::
        \theta_j = \theta + \delta_j,\qquad
        \hat\theta_j = \theta_j + \rho\,\frac{\nabla L(\theta_j)}{\lVert\nabla L(\theta_j)\rVert},\qquad
        \epsilon_j = \hat\theta_j - \theta

    with ``delta_j`` drawn by :func:`~tiltedsam.functional.draw_noise`: one Euler step of the HMC dynamics
    of Eq. 11 with zero initial momentum, always accepted. Cost: 2 evaluations per sample (at
    ``theta + delta_j`` and ``theta + eps_j``). Note ``||eps_j|| <= noise_radius + rho``. The variants
    change only how ``eps_j`` is drawn, never TSAM's tilted average (Eq. 4); they combine, and their
    costs (``s = num_samples``, one forward/backward on the whole batch = 1) are in ``docs/cost.md``:

    * ``direction="shared"``: one gradient at ``theta`` (label ``"clean"``, whose loss is logged as
      ``last_step.extra["clean_loss"]``) sets every sample's direction; cost ``s + 1``.
    * ``ascent_fraction=f``: the direction-only evaluations (``"noise"``, ``"clean"``) use the first
      ``ceil(f B)`` examples of the batch (``evaluation.batch(x, y)``; the loaders shuffle), the gradients
      that enter the update the whole batch; cost ``s (1 + f)`` or ``s + f`` (shared).
    * ``refresh_every=k`` (lazy): the directions are computed on every ``k``-th step only (the first
      always) and reused in between with fresh noise; cost ``s (1 + f / k)`` or ``s + f / k`` on
      average. The directions (``s`` parameter copies, one if shared) and the step counter are saved
      in the optimizer's ``state_dict``; a direction with a non-finite norm is not kept.

    Args:
        noise, noise_radius, noise_std: the noise ``delta_j`` (as TSAM's arguments of the same names).
        direction: ``"per_sample"`` (Algorithm 2) or ``"shared"``.
        ascent_fraction: ``f``, the fraction of the mini-batch used by the direction-only evaluations.
        refresh_every: ``k``, recompute the directions every ``k`` steps (1 = every step).
    """

    name = "ascent"
    has_ascent_only_evaluations = True

    def __init__(self, noise: str = "gaussian", noise_radius: float = 1.0, noise_std: float = 1.0,
                 direction: str = "per_sample", ascent_fraction: float = 1.0, refresh_every: int = 1) -> None:
        self.noise = check_hyperparameter("noise", noise, choices=NOISE_KINDS)
        self.noise_radius = check_hyperparameter("noise_radius", noise_radius, low=0.0)
        self.noise_std = check_hyperparameter("noise_std", noise_std, low=0.0)
        if self.noise_std == 0 and self.noise == "gaussian" and self.noise_radius > 0:
            raise ValueError("noise_std must be > 0 for gaussian noise (use noise_radius=0 to turn noise off)")
        self.direction = check_hyperparameter("direction", direction, choices=ASCENT_DIRECTIONS)
        self.ascent_fraction = check_hyperparameter("ascent_fraction", ascent_fraction, low=0.0, high=1.0,
                                                    low_inclusive=False)
        self.refresh_every = check_hyperparameter("refresh_every", refresh_every, integer=True, low=1)
        #: the evaluations whose gradient only chooses the ascent direction: at theta + delta_j (per sample)
        #: or at theta (shared), on the fraction f of the batch
        self.noise_request = Request(Point.NOISE, self.ascent_fraction, ascent_only=True)
        self.clean_request = Request(Point.CLEAN, self.ascent_fraction, ascent_only=True)
        # lazy ascent: the last normalised directions (one list per sample, or one for "shared")
        self.directions: list[list[Tensor | None]] | None = None
        self.steps_since_refresh = 0

    @property
    def shared(self) -> bool:
        return self.direction == "shared"

    @property
    def lazy(self) -> bool:
        return self.refresh_every > 1

    def draw_noise(self, params: list[Tensor], generator: Any) -> list[Tensor] | None:
        """``delta_j`` (``None`` when ``noise_radius = 0``: no noise, nothing drawn)."""
        if self.noise_radius == 0:
            return None
        return draw_noise(params, self.noise, self.noise_radius, generator, std=self.noise_std)

    def evaluations_per_sample(self) -> int:
        """Closure calls of one eager draw with its own direction (2); see :meth:`evaluations_per_step`."""
        return 2 if self.direction == "per_sample" else 1

    def _step_cost(self, num_samples: int, refresh: bool) -> float:
        ascent = (num_samples if self.direction == "per_sample" else 1) * self.ascent_fraction
        return num_samples + (ascent if refresh else 0.0)

    def evaluations_per_step(self, num_samples: int) -> int | float:
        """``s (1 + f / k)`` (per-sample directions) or ``s + f / k`` (shared), averaged over ``k`` steps."""
        refresh = self._step_cost(num_samples, True)
        return evaluation_count((refresh + (self.refresh_every - 1) * num_samples) / self.refresh_every)

    def evaluations_next_step(self, num_samples: int) -> int | float:
        return evaluation_count(self._step_cost(num_samples, self.refresh_due(num_samples)))

    def refresh_due(self, num_samples: int) -> bool:
        """Whether the next step computes its ascent directions (always, unless lazy with kept directions)."""
        if self.refresh_every == 1 or self.directions is None:
            return True
        expected = num_samples if self.direction == "per_sample" else 1
        return self.steps_since_refresh >= self.refresh_every or len(self.directions) != expected

    def end_step(self, refresh: bool, kept: list[list[Tensor | None] | None]) -> None:
        """Lazy ascent: keep this refresh step's unit directions (none when one was not finite: the next step
        refreshes) and count the steps since."""
        if not self.lazy:
            return
        if refresh:
            self.directions = None if any(d is None for d in kept) else kept  # type: ignore[assignment]
            self.steps_since_refresh = 1
        else:
            self.steps_since_refresh += 1

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "noise": self.noise, "noise_radius": self.noise_radius, "noise_std": self.noise_std,
                "direction": self.direction, "ascent_fraction": self.ascent_fraction,
                "refresh_every": self.refresh_every}

    def state_dict(self) -> dict[str, Any]:
        if self.refresh_every == 1:
            return {}
        return {"steps_since_refresh": self.steps_since_refresh, "directions": _copied(self.directions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_since_refresh = int(state.get("steps_since_refresh", 0))
        self.directions = _copied(state.get("directions"))


def _copied(directions: list[list[Tensor | None]] | None) -> list[list[Tensor | None]] | None:
    if directions is None:
        return None
    return [[None if d is None else d.detach().clone() for d in sample] for sample in directions]
