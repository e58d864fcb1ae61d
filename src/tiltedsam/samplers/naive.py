r"""The naive sampler of App. C.3 (Eq. 75): ``eps`` drawn from ``mu`` itself, then tilted aggregation."""

from __future__ import annotations

import math
from typing import Any, Generator

import torch

from ..optim import sharded
from ..optim.functional import NOISE_KINDS, draw_noise
from .base import DrawResult, Sampler, SamplingContext

__all__ = ["NaiveSampler"]


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
        self.noise = noise
        self.noise_std = noise_std
        self.radius = radius
        self.validate()

    def validate(self) -> None:
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        for name, value, positive in (("noise_std", self.noise_std, True), ("radius", self.radius, False)):
            if value is None and name == "radius":
                continue
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            if bad or value < 0 or (positive and value == 0):
                raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")

    def evaluations_per_sample(self) -> int:
        return 1

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "noise": self.noise, "noise_std": self.noise_std, "radius": self.radius}

    def draw(self, ctx: SamplingContext) -> Generator[str, Any, DrawResult]:
        radius = float(ctx.rho if self.radius is None else self.radius)
        if radius > 0:
            eps = draw_noise(ctx.params, self.noise, radius, ctx.generator, std=self.noise_std)
            with torch.no_grad():
                sharded.add_(ctx.params, eps)  # [sharded]
            del eps
        loss = yield "naive"
        return ctx.loss_value(loss), ctx.grads()
