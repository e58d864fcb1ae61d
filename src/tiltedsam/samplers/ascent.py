"""Algorithm 2 of the TSAM paper: random noise, then one normalised gradient-ascent step — plus its
cheaper variants (shared direction, sub-batch ascent, lazy ascent)."""

from __future__ import annotations

import math
from typing import Any, Generator

import torch
from torch import Tensor

from ..optim import sharded
from ..optim.functional import NOISE_KINDS, NORM_EPS, ascent_step, draw_noise, global_norm
from .base import DrawResult, Sampler, SamplingContext, evaluation_count

__all__ = ["AscentSampler", "ASCENT_DIRECTIONS"]

#: ``"per_sample"``: Algorithm 2 (one ascent gradient per sample); ``"shared"``: one at ``theta`` for all.
ASCENT_DIRECTIONS = ("per_sample", "shared")


def _detached(loss: Any) -> Any:
    return loss.detach() if isinstance(loss, Tensor) else loss


class AscentSampler(Sampler):
    r"""The cheap sampler of Algorithm 2 (used in all of the paper's main experiments), and cheaper variants.

    **Default** (``direction="per_sample"``, ``ascent_fraction=1``, ``refresh_every=1``): for each sample ``j``

    .. math::
        \theta_j = \theta + \delta_j,\qquad
        \hat\theta_j = \theta_j + \rho\,\frac{\nabla L(\theta_j)}{\lVert\nabla L(\theta_j)\rVert},\qquad
        \epsilon_j = \hat\theta_j - \theta

    with ``delta_j`` drawn by :func:`~tiltedsam.optim.functional.draw_noise` (``noise`` =
    ``"gaussian"`` clipped to ``noise_radius`` in the global L2 norm, or ``"uniform"`` in that ball).
    It is one Euler step of the HMC dynamics of Eq. 11 with zero initial momentum, accepted always.
    Cost: 2 evaluations per sample (at ``theta + delta_j`` and at ``theta + eps_j``); none at theta.
    Note ``||eps_j|| <= noise_radius + rho``: the ball of Algorithm 2 is not the ``rho``-ball of Eq. 3.
    TSAM then estimates the tilted gradient (Eq. 4) by
    ``g = sum_j w_j grad L(theta + eps_j) / sum_j w_j`` with ``w_j = exp((t - delta) L(theta + eps_j))``;
    every variant below changes only how ``eps_j`` is drawn, never that average.

    **Cheaper variants** (combinable; the cost is in gradient-evaluation equivalents, one
    forward/backward on the whole mini-batch = 1, with ``s = num_samples``):

    * ``direction="shared"``: one gradient at ``theta`` sets the ascent direction of every sample,
      ``eps_j = delta_j + rho g(theta) / ||g(theta)||``. The evaluation at ``theta`` (label ``"clean"``)
      also yields the clean mini-batch loss, for free (``last_step.extra["clean_loss"]``).
      Cost ``s + 1`` instead of ``2 s``. The samples differ only by their noise ``delta_j``.
    * ``ascent_fraction=f`` (sub-batch ascent, ``0 < f <= 1``): the evaluations that only choose the
      ascent direction (``"noise"``, ``"clean"``) use the first ``ceil(f B)`` examples of the mini-batch
      of ``B`` (the loaders shuffle, so it is a random sub-batch; cf. m-sharpness, Foret et al. 2021,
      Andriushchenko & Flammarion 2022). The direction becomes ``grad L_S(theta_j) / ||grad L_S(theta_j)||``
      for the sub-batch ``S``; the gradients that enter the update still use the whole batch. The
      optimizer tells the closure which fraction to use (:class:`~tiltedsam.optim.base.Evaluation`,
      ``evaluation.batch(x, y)``). Cost ``s (1 + f)`` (per sample) or ``s + f`` (shared).
    * ``refresh_every=k`` (lazy ascent, ``k >= 1``): the ascent directions are computed on every ``k``-th
      step only (the first step always); in between, ``eps_j = delta_j + rho d_j`` reuses the last
      normalised directions ``d_j`` (per sample, or the shared one) with fresh noise ``delta_j``.
      Cost averaged over steps ``s (1 + f / k)`` (per sample) or ``s + f / k`` (shared); a refresh
      step costs what the eager variant costs, the others ``s``. The directions and the step counter
      are saved in the optimizer's ``state_dict``. Memory: the per-sample lazy variant holds ``s``
      directions (``s`` copies of the parameters) between steps, the shared one a single copy.
      A direction with a non-finite norm is not kept (the next step refreshes).

    Args:
        noise, noise_radius, noise_std: the noise ``delta_j`` (see above).
        direction: ``"per_sample"`` (Algorithm 2) or ``"shared"``.
        ascent_fraction: ``f``, the fraction of the mini-batch used by the direction-only evaluations.
        refresh_every: ``k``, recompute the directions every ``k`` steps (1 = every step).
    """

    name = "ascent"
    ascent_labels = frozenset({"noise", "clean"})

    def __init__(self, noise: str = "gaussian", noise_radius: float = 1.0, noise_std: float = 1.0,
                 direction: str = "per_sample", ascent_fraction: float = 1.0, refresh_every: int = 1) -> None:
        self.noise = noise
        self.noise_radius = noise_radius
        self.noise_std = noise_std
        self.direction = direction
        self.ascent_fraction = ascent_fraction
        self.refresh_every = refresh_every
        self.validate()
        # lazy ascent: the last normalised directions (one list per sample, or one for "shared")
        self._directions: list[list[Tensor | None]] | None = None
        self._steps_since_refresh = 0

    def validate(self) -> None:
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        for name in ("noise_radius", "noise_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0) or value == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.noise_std == 0 and self.noise == "gaussian" and self.noise_radius > 0:
            raise ValueError("noise_std must be > 0 for gaussian noise (use noise_radius=0 to turn noise off)")
        if self.direction not in ASCENT_DIRECTIONS:
            raise ValueError(f"direction must be one of {ASCENT_DIRECTIONS}, got {self.direction!r}")
        f = self.ascent_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 < f <= 1):
            raise ValueError(f"ascent_fraction must be a number in (0, 1], got {f!r}")
        k = self.refresh_every
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"refresh_every must be an integer >= 1, got {k!r}")

    # ------------------------------------------------------------------ cost
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
        return evaluation_count(self._step_cost(num_samples, self._refresh_due(num_samples)))

    def batch_fraction(self, label: str) -> float:
        return float(self.ascent_fraction) if label in self.ascent_labels else 1.0

    def _refresh_due(self, num_samples: int) -> bool:
        if self.refresh_every == 1 or self._directions is None:
            return True
        expected = num_samples if self.direction == "per_sample" else 1
        return self._steps_since_refresh >= self.refresh_every or len(self._directions) != expected

    # ------------------------------------------------------------------ state
    def config(self) -> dict[str, Any]:
        return {"name": self.name, "noise": self.noise, "noise_radius": self.noise_radius, "noise_std": self.noise_std,
                "direction": self.direction, "ascent_fraction": self.ascent_fraction,
                "refresh_every": self.refresh_every}

    def state_dict(self) -> dict[str, Any]:
        if self.refresh_every == 1:
            return {}
        directions = None if self._directions is None else [
            [None if d is None else d.detach().clone() for d in sample] for sample in self._directions]
        return {"steps_since_refresh": self._steps_since_refresh, "directions": directions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps_since_refresh = int(state.get("steps_since_refresh", 0))
        directions = state.get("directions")
        self._directions = None if directions is None else [
            [None if d is None else d.detach().clone() for d in sample] for sample in directions]

    # ------------------------------------------------------------------ the draw
    @staticmethod
    @torch.no_grad()
    def _unit(grads: list[Tensor | None]) -> tuple[list[Tensor | None], bool]:
        """``g / (||g|| + 1e-12)`` (the direction ``ascent_step`` moves along) and whether it is finite."""
        norm = global_norm(grads)
        factor = 1.0 / (norm + NORM_EPS)
        unit = [None if g is None else g * factor.to(g.device, g.dtype) for g in grads]
        return unit, math.isfinite(float(norm))

    @staticmethod
    @torch.no_grad()
    def _move(params: list[Tensor], direction: list[Tensor | None], rho: float) -> None:
        for p, d in zip(params, direction):
            if d is not None:
                p.add_(d.to(p.device, p.dtype), alpha=rho)

    def _add_noise(self, ctx: SamplingContext) -> None:
        if self.noise_radius > 0:
            noise = draw_noise(ctx.params, self.noise, self.noise_radius, ctx.generator, std=self.noise_std)
            with torch.no_grad():
                sharded.add_(ctx.params, noise)  # [sharded]
            del noise

    def draw(self, ctx: SamplingContext) -> Generator[str, Any, DrawResult]:
        j = ctx.sample_index
        if j == 0:
            ctx.step_scratch["refresh"] = self._refresh_due(ctx.num_samples)
        refresh = ctx.step_scratch["refresh"]
        lazy = self.refresh_every > 1
        # Losses that are only logged: kept on the device (detached, so their graph is freed) and read
        # after the perturbed loss, whose value the weights need; by then they are computed, so reading
        # them does not stall the device a second time per sample.
        logged: list[tuple[str, Any]] = []
        if self.direction == "shared":
            if j == 0 and refresh:
                clean_loss = yield "clean"  # at theta: the clean loss, and the direction for every sample
                logged.append(("clean_loss", _detached(clean_loss)))
                # a non-finite direction is used this step (the perturbed losses then show it to TSAM's
                # nonfinite policy) but never kept for reuse
                shared, finite = self._unit(ctx.grads())
                ctx.step_scratch["direction"] = shared
                if lazy:
                    self._directions = [shared] if finite else None
            direction = ctx.step_scratch["direction"] if refresh else self._directions[0]
            self._add_noise(ctx)
            self._move(ctx.params, direction, ctx.rho)
        else:
            self._add_noise(ctx)
            if refresh:
                noise_loss = yield "noise"
                logged.append(("noise_loss", _detached(noise_loss)))
                if lazy:
                    unit, finite = self._unit(ctx.grads())
                    kept = ctx.step_scratch.setdefault("directions", [])
                    kept.append(unit if finite else None)
                    if j == ctx.num_samples - 1:
                        self._directions = None if any(u is None for u in kept) else kept
                ascent_step(ctx.params, ctx.grads(), ctx.rho)
            else:
                self._move(ctx.params, self._directions[j], ctx.rho)
        loss = yield "perturbed"
        value = ctx.loss_value(loss)
        for key, logged_loss in logged:
            ctx.record(key, ctx.local_loss_value(logged_loss))
        if j == ctx.num_samples - 1 and lazy:
            self._steps_since_refresh = 1 if refresh else self._steps_since_refresh + 1
        return value, ctx.grads()
