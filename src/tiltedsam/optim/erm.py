"""ERM: the base optimizer alone, inside the same shell as SAM/TSAM (one evaluation per step)."""

from __future__ import annotations

from typing import Any, Generator

import torch
from torch import nn
from torch.optim import Optimizer

from .base import CLEAN, PerturbationOptimizer, StepDiagnostics

__all__ = ["ERM"]


class ERM(PerturbationOptimizer):
    r"""Empirical risk minimisation with the base optimizer: ``theta <- base_step(theta, grad L(theta))``.

    Exists so that the harness, the registry and the shared tests treat every optimizer alike
    (closure calls, ``manual_step``, diagnostics, ``state_dict`` format). One evaluation per step.

    A NaN/inf loss raises :class:`~tiltedsam.tilt.NonFiniteLossError` before the base optimizer steps;
    there is no ``nonfinite="ignore"``: with one point there is no other gradient to step with.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        model: nn.Module | None = None,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(params, base_optimizer, {}, model=model, seed=seed, **base_kwargs)

    moves_parameters = False  # evaluated at theta only: no snapshot to take
    fixed_evaluations = 1

    def _program(self, params, origin) -> Generator[Any, Any, tuple[None, StepDiagnostics]]:
        loss = self._loss_value((yield CLEAN))
        return None, StepDiagnostics.single_point(loss)
