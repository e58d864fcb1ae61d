"""RSAM (Liu et al. 2022, "Random Sharpness-Aware Minimization"): a random perturbation first."""

from __future__ import annotations

from typing import Any, Generator, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..functional import (ascent_step, check_hyperparameter, restore, scale_by_filter_norms_, shift,
                          standard_normal_like)
from .base import PERTURBED, Point, PerturbationOptimizer, Request, StepDiagnostics, _hyperparameter

__all__ = ["RSAM", "filterwise_noise"]


@torch.no_grad()
def filterwise_noise(params: Sequence[Tensor], scale: float, generator: torch.Generator) -> list[Tensor]:
    r"""RSAM's random perturbation: ``delta_i = scale * ||w_i|| * z_i``, ``z ~ N(0, I)``.

    ``w_i`` is one *filter*: one output unit (a slice along dimension 0) of a parameter with two or
    more dimensions, or the whole tensor for a vector or scalar (biases, normalisation layers). So
    each filter's noise is proportional to that filter's norm, and a zero filter gets no noise.
    """
    noise = standard_normal_like(params, generator)
    scale_by_filter_norms_(noise, params, scale)
    return noise


class RSAM(PerturbationOptimizer):
    r"""Random SAM: ascend from ``theta`` along a randomly smoothed gradient plus the noise itself.

    .. math::
        \delta = \mathrm{filterwise\_noise}(\theta, \gamma),\quad
        \tilde g = \nabla L(\theta + \delta),\quad
        v = \lambda \tilde g + \delta,\quad
        \hat\theta = \theta + \rho \frac{v}{\lVert v\rVert},\quad
        \theta \leftarrow \mathrm{base\_step}\big(\theta, \nabla L(\hat\theta)\big)

    as in the authors' code (Liu et al. 2022; see :func:`filterwise_noise` for ``delta``). The
    ascent starts from ``theta``, not from ``theta + delta``. With ``noise_scale = 0`` it is SAM
    (the first gradient is then taken at theta).

    **Gradient evaluations per step:** 2 (at ``theta + delta`` and at ``theta_hat``). Memory: the
    noise and ``v`` (parameter-sized).

    Args:
        rho: ascent radius (``>= 0``).
        noise_scale: ``gamma >= 0``, noise relative to each filter's norm. Default ``1e-3``, inside
            the range the authors' ImageNet recipe ramps through (5e-4 to 2.5e-3); set it from a
            schedule by assigning :attr:`noise_scale` between steps.
        grad_weight: ``lambda >= 0``, weight of the noisy gradient in ``v`` (2 in the authors' code).

    A NaN/inf loss raises :class:`~tiltedsam.tilt.NonFiniteLossError` (parameters restored, no step);
    there is no ``nonfinite="ignore"``: neither point can be dropped.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.05,
        noise_scale: float = 1e-3,
        grad_weight: float = 2.0,
        model: nn.Module | None = None,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        hyper = {
            "rho": check_hyperparameter("rho", rho, low=0.0),
            "noise_scale": check_hyperparameter("noise_scale", noise_scale, low=0.0),
            "grad_weight": check_hyperparameter("grad_weight", grad_weight, low=0.0),
        }
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, **base_kwargs)

    rho = _hyperparameter("rho")

    noise_scale = _hyperparameter("noise_scale")
    @noise_scale.setter
    def noise_scale(self, value: float) -> None:
        self.hyperparameters["noise_scale"] = check_hyperparameter("noise_scale", value, low=0.0)

    fixed_evaluations = 2

    #: the noisy point's gradient enters the ascent direction mixed with the noise: not ascent-only for DDP
    _NOISE = Request(Point.NOISE)

    def _program(self, params, origin) -> Generator[Request, Any, tuple[None, StepDiagnostics]]:
        if self.noise_scale > 0:
            noise = filterwise_noise(params, self.noise_scale, self.generator)
            with torch.no_grad():
                shift(params, noise)
        else:
            noise = [torch.zeros_like(p) for p in params]
        noise_loss = self._loss_value((yield self._NOISE))
        with torch.no_grad():
            # v = lambda * grad L(theta + delta) + delta, built in the noise buffers
            for z, g in zip(noise, self._grads(params)):
                if g is not None:
                    z.add_(g, alpha=self.hyperparameters["grad_weight"])
        restore(params, origin)
        ascent_step(params, noise, self.rho)
        perturbed_loss = self._loss_value((yield PERTURBED))
        return None, StepDiagnostics.single_point(perturbed_loss, noise_loss=noise_loss)
