r"""The naive sampler of App. C.3 (Eq. 75): ``eps`` drawn from ``mu`` itself, then tilted aggregation."""

from __future__ import annotations

from typing import Any, Generator

import torch

from ...functional import NOISE_KINDS, check_hyperparameter, draw_noise, shift
from ..base import Point, Request
from .base import DrawResult, Sampler, SamplingContext

__all__ = ["NaiveSampler"]

_NAIVE = Request(Point.PERTURBED, name="naive")


class NaiveSampler(Sampler):
    r"""Draw ``eps_i ~ mu`` and let TSAM weight the samples by ``exp(t L(theta + eps_i))`` (Eq. 75).

    .. math::
        \hat g = \frac{\sum_i e^{t L(\theta+\epsilon_i)} \nabla L(\theta+\epsilon_i)}
                      {\sum_i e^{t L(\theta+\epsilon_i)}},\qquad \epsilon_i \sim \mu

    a self-normalised importance-sampling estimate of the tilted gradient (Eq. 4) that converges to
    it as ``s`` grows, but slowly when ``t`` is large (App. C.3, Fig. 8). Because the samples come
    from ``mu`` and not from ``exp(delta L)``, TSAM treats ``delta`` as ``0`` with this sampler
    (:attr:`targets_tilted_density` is ``False``) and rejects an explicit non-zero ``sample_tilt``.

    **Cost:** 1 evaluation per sample (at ``theta + eps_i``), so ``s`` per TSAM step.

    Args:
        noise: ``"uniform"`` (uniform in the global-L2 ball, the paper's ``mu``) or ``"gaussian"``
            (``N(0, noise_std^2 I)`` clipped to the ball).
        noise_std: standard deviation of the Gaussian before clipping.
        radius: radius of the ball; ``None`` uses TSAM's ``rho``.
    """

    name = "naive"
    targets_tilted_density = False

    def __init__(self, noise: str = "uniform", noise_std: float = 1.0, radius: float | None = None) -> None:
        self.noise = check_hyperparameter("noise", noise, choices=NOISE_KINDS)
        self.noise_std = check_hyperparameter("noise_std", noise_std, low=0.0, low_inclusive=False)
        self.radius = None if radius is None else check_hyperparameter("radius", radius, low=0.0)

    def evaluations_per_sample(self) -> int:
        return 1

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "noise": self.noise, "noise_std": self.noise_std, "radius": self.radius}

    def draw(self, ctx: SamplingContext) -> Generator[Request, Any, DrawResult]:
        radius = float(ctx.rho if self.radius is None else self.radius)
        if radius > 0:
            eps = draw_noise(ctx.params, self.noise, radius, ctx.generator, std=self.noise_std)
            with torch.no_grad():
                shift(ctx.params, eps)
            del eps
        loss = yield _NAIVE
        return ctx.loss_value(loss), ctx.grads()
