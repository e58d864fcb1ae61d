"""ESAM2 (TSAM paper, Sec. 5.1): SAM that tries several ascent step sizes and keeps the worst point."""

from __future__ import annotations

import math
from typing import Any, Generator, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..tilt import NonFiniteLossError
from ..functional import ascent_step, check_hyperparameter, restore
from .base import CLEAN, Point, PerturbationOptimizer, Request, StepDiagnostics, _hyperparameter

__all__ = ["ESAM2"]


class ESAM2(PerturbationOptimizer):
    r"""Expanded SAM #2: search the ascent direction for the step size with the largest loss.

    .. math::
        g = \nabla L(\theta),\quad \epsilon_k = r_k \frac{g}{\lVert g\rVert},\quad
        k^* = \arg\max_k L(\theta + \epsilon_k),\quad
        \theta \leftarrow \mathrm{base\_step}\big(\theta, \nabla L(\theta + \epsilon_{k^*})\big)

    with step sizes ``r_k = rho * multipliers[k]``, tried in the given order (ties keep the first): the
    TSAM paper's SAM variant given TSAM's compute budget. With one multiplier ``1.0`` it is SAM.
    A non-finite loss raises :class:`~tiltedsam.tilt.NonFiniteLossError` (parameters restored, no
    step); with ``nonfinite="ignore"`` a step size whose loss is non-finite is never chosen, and the
    step raises only when every candidate (or the clean loss, which sets the direction) is non-finite.

    **Gradient evaluations per step:** ``1 + len(multipliers)`` (the chosen point's gradient is kept,
    not recomputed): 6 with the default five, TSAM's default budget. Memory: two parameter copies.

    Args:
        rho: base ascent radius (``>= 0``).
        multipliers: positive factors of ``rho``, at least one.
        nonfinite: ``"raise"`` (default) or ``"ignore"`` (see above).
    """

    nonfinite_policies = ("raise", "ignore")

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.05,
        multipliers: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 2.5),
        model: nn.Module | None = None,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_hyperparameter("rho", rho, low=0.0)
        if isinstance(multipliers, (str, bytes)) or not isinstance(multipliers, Sequence) or len(multipliers) == 0:
            raise ValueError(f"multipliers must be a non-empty sequence of numbers > 0, got {multipliers!r}")
        for i, m in enumerate(multipliers):
            check_hyperparameter(f"multipliers[{i}]", m, low=0.0, low_inclusive=False)
        hyper = {"rho": rho, "multipliers": [float(m) for m in multipliers]}
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, **base_kwargs)

    rho = _hyperparameter("rho")

    @property
    def step_sizes(self) -> list[float]:
        return [self.rho * m for m in self.hyperparameters["multipliers"]]

    @classmethod
    def evaluations_for(cls, **settings: Any) -> int:
        multipliers = settings.get("multipliers", cls.setting_defaults()["multipliers"])
        return 1 + (len(multipliers) if isinstance(multipliers, Sequence) else 0)

    def _program(self, params, origin) -> Generator[Request, Any, tuple[list[Tensor | None], StepDiagnostics]]:
        losses: list[float] = []
        best: int | None = None
        best_grads: list[Tensor | None] = []
        clean_loss = self._loss_value((yield CLEAN))
        clean_grads = [None if g is None else g.detach().clone() for g in self._grads(params)]
        for k, radius in enumerate(self.step_sizes):
            if k > 0:
                restore(params, origin)
            ascent_step(params, clean_grads, radius)  # same arithmetic as SAM's ascent
            loss = self._loss_value((yield Request(Point.PERTURBED, name=f"step_size_{k}")),
                                    check=self.nonfinite == "raise")
            losses.append(loss)
            if math.isfinite(loss) and (best is None or loss > losses[best]):
                best = k
                best_grads = [None if g is None else g.detach().clone() for g in self._grads(params)]
        if best is None:
            raise NonFiniteLossError(
                f"ESAM2: every step size gave a non-finite loss ({losses}); no step was taken and the parameters "
                "keep their values from before this step"
            )
        weights = [1.0 if k == best else 0.0 for k in range(len(losses))]
        extra = {"clean_loss": clean_loss, "chosen_index": best, "chosen_step_size": self.step_sizes[best]}
        return best_grads, StepDiagnostics(losses[best], losses, weights, effective_sample_size=1.0, extra=extra)
