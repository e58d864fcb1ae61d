"""Algorithm 2 of the TSAM paper: random noise, then one normalised gradient-ascent step."""

from __future__ import annotations

from typing import Any, Generator

import torch

from ..optim.functional import NOISE_KINDS, ascent_step, draw_noise
from .base import DrawResult, Sampler, SamplingContext

__all__ = ["AscentSampler"]


class AscentSampler(Sampler):
    r"""The cheap sampler of Algorithm 2 (used in all of the paper's main experiments).

    For each sample ``j``:

    .. math::
        \theta_j = \theta + \delta_j,\qquad
        \hat\theta_j = \theta_j + \rho\,\frac{\nabla L(\theta_j)}{\lVert\nabla L(\theta_j)\rVert},\qquad
        \epsilon_j = \hat\theta_j - \theta

    with ``delta_j`` drawn by :func:`~tiltedsam.optim.functional.draw_noise` (``noise`` =
    ``"gaussian"`` clipped to ``noise_radius`` in the global L2 norm, or ``"uniform"`` in that ball).
    It is one Euler step of the HMC dynamics of Eq. 11 with zero initial momentum, accepted always.
    Cost: 2 evaluations per sample (at ``theta + delta_j`` and at ``theta + eps_j``); none at theta.
    Note ``||eps_j|| <= noise_radius + rho``: the ball of Algorithm 2 is not the ``rho``-ball of Eq. 3.
    """

    name = "ascent"
    ascent_labels = frozenset({"noise"})

    def __init__(self, noise: str = "gaussian", noise_radius: float = 1.0, noise_std: float = 1.0) -> None:
        self.noise = noise
        self.noise_radius = noise_radius
        self.noise_std = noise_std
        self.validate()

    def validate(self) -> None:
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {self.noise!r}")
        for name in ("noise_radius", "noise_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0) or value == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.noise_std == 0 and self.noise == "gaussian" and self.noise_radius > 0:
            raise ValueError("noise_std must be > 0 for gaussian noise (use noise_radius=0 to turn noise off)")

    def evaluations_per_sample(self) -> int:
        return 2

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "noise": self.noise, "noise_radius": self.noise_radius, "noise_std": self.noise_std}

    def draw(self, ctx: SamplingContext) -> Generator[str, Any, DrawResult]:
        if self.noise_radius > 0:
            noise = draw_noise(ctx.params, self.noise, self.noise_radius, ctx.generator, std=self.noise_std)
            with torch.no_grad():
                torch._foreach_add_(ctx.params, noise)
            del noise
        noise_loss = yield "noise"
        # Only logged: keep it on the device (detached, so its graph is freed) and read it after the
        # perturbed loss, whose value the weights need; by then it is computed, so reading it does
        # not stall the device a second time per sample.
        noise_loss = noise_loss.detach() if isinstance(noise_loss, torch.Tensor) else noise_loss
        ascent_step(ctx.params, ctx.grads(), ctx.rho)
        loss = yield "perturbed"
        value = ctx.loss_value(loss)
        ctx.record("noise_loss", ctx.local_loss_value(noise_loss))
        return value, ctx.grads()
