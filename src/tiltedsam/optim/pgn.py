"""PGN (Zhao et al. 2022, "Penalizing gradient norm for efficiently improving generalization")."""

from __future__ import annotations

from typing import Any, Generator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..functional import NORM_EPS, ascent_step, check_hyperparameter, global_norm
from .base import CLEAN, PERTURBED, PerturbationOptimizer, Request, StepDiagnostics, _hyperparameter

__all__ = ["PGN"]


class PGN(PerturbationOptimizer):
    r"""Gradient-norm penalty ``L(theta) + lambda ||grad L(theta)||`` by its first-order approximation.

    .. math::
        g_1 = \nabla L(\theta),\qquad g_2 = \nabla L\Big(\theta + r\frac{g_1}{\lVert g_1\rVert}\Big),\qquad
        g = (1-\alpha)\, g_1 + \alpha\, g_2,\qquad \alpha = \lambda / r

    then ``theta <- base_step(theta, g)``. ``alpha = 0`` is the base optimizer (ERM), ``alpha = 1`` is
    SAM with ``rho = r``; ``alpha > 1`` weights the SAM gradient beyond SAM. With
    ``normalize_clean=True`` the first term uses ``g_1 / ||g_1||`` (the default of the authors' code;
    not the paper's formula). The objective estimate in ``last_step`` is ``L(theta) + alpha r ||g_1||``.

    **Gradient evaluations per step:** 2 (at theta and at the ascent point). Memory: one copy of
    ``g_1``.

    Args:
        rho: ``r``, the ascent radius (``>= 0``); default 0.1, the authors' CIFAR recipe.
        alpha: ``alpha >= 0``; default 0.8, the authors' CIFAR recipe (the TSAM paper tunes it over
            {0.3, 0.5, 0.7, 0.9}).
        normalize_clean: normalise the clean gradient in the combination.

    A NaN/inf loss raises :class:`~tiltedsam.tilt.NonFiniteLossError` (parameters restored, no step);
    there is no ``nonfinite="ignore"``: dropping a gradient would silently turn PGN into SAM or ERM.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.1,
        alpha: float = 0.8,
        normalize_clean: bool = False,
        model: nn.Module | None = None,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_hyperparameter("rho", rho, low=0.0)
        alpha = check_hyperparameter("alpha", alpha, low=0.0)
        check_hyperparameter("normalize_clean", normalize_clean, choices=(True, False))
        hyper = {"rho": rho, "alpha": alpha, "normalize_clean": normalize_clean}
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, **base_kwargs)

    rho = _hyperparameter("rho")
    alpha = _hyperparameter("alpha")
    fixed_evaluations = 2

    def _program(self, params, origin) -> Generator[Request, Any, tuple[list[Tensor | None], StepDiagnostics]]:
        clean_loss = self._loss_value((yield CLEAN))
        clean_grads = [None if g is None else g.detach().clone() for g in self._grads(params)]
        clean_norm = float(global_norm(clean_grads))
        ascent_step(params, clean_grads, self.rho)
        perturbed_loss = self._loss_value((yield PERTURBED))
        alpha = self.alpha
        clean_weight = 1.0 - alpha
        if self.hyperparameters["normalize_clean"]:
            clean_weight /= clean_norm + NORM_EPS
        combined: list[Tensor | None] = []
        with torch.no_grad():
            for g1, g2 in zip(clean_grads, self._grads(params)):
                if g1 is None and g2 is None:
                    combined.append(None)
                elif g2 is None:
                    combined.append(g1.mul_(clean_weight))
                elif g1 is None:
                    combined.append(g2.mul(alpha))
                else:  # (1 - alpha) g1 + alpha g2: exactly g1 at alpha = 0 and g2 at alpha = 1
                    combined.append(g1.mul_(clean_weight).add_(g2, alpha=alpha))
        objective = clean_loss + alpha * self.rho * clean_norm
        extra = {"clean_loss": clean_loss, "perturbed_loss": perturbed_loss, "clean_grad_norm": clean_norm}
        return combined, StepDiagnostics(objective, [clean_loss, perturbed_loss], [1.0 - alpha, alpha], extra=extra)
