"""SAM (Foret et al. 2021) and its adaptive variant ASAM (Kwon et al. 2021)."""

from __future__ import annotations

from typing import Any, Generator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .base import PerturbationOptimizer, StepDiagnostics
from .functional import ascent_step

__all__ = ["SAM"]


class SAM(PerturbationOptimizer):
    r"""Sharpness-Aware Minimization: minimise ``max_{||eps|| <= rho} L(theta + eps)`` by one ascent step.

    .. math::
        g = \nabla L(\theta),\qquad \hat\epsilon = \rho\,\frac{T^2 g}{\lVert T g\rVert},\qquad
        \theta \leftarrow \mathrm{base\_step}\big(\theta, \nabla L(\theta + \hat\epsilon)\big)

    with ``T = I`` (SAM) or ``T = diag(|theta| + adaptive_eta)`` (ASAM, ``adaptive=True``). Two
    evaluations per step: :meth:`step` calls the closure twice (at ``theta`` and ``theta + eps``) and
    returns the loss at ``theta + eps`` (the SAM objective estimate; the loss at ``theta`` is in
    ``last_step.extra["clean_loss"]``). ``rho = 0`` gives exactly the base optimizer's update.

    For users of the widely used ``davda54/sam`` API, :meth:`first_step` / :meth:`second_step` work
    the same way (the caller runs forward/backward in between).
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        adaptive_eta: float = 0.01,
        model: nn.Module | None = None,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = self._check_nonnegative("rho", rho)
        if not isinstance(adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {adaptive!r}")
        adaptive_eta = self._check_nonnegative("adaptive_eta", adaptive_eta)
        hyper = {"rho": rho, "adaptive": adaptive, "adaptive_eta": adaptive_eta}
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, **base_kwargs)
        self._pending: tuple[list[Tensor], list[Tensor]] | None = None

    #: the evaluation at theta only sets the ascent direction (per-rank under m-sharpness)
    ascent_labels = frozenset({"clean"})

    @property
    def rho(self) -> float:
        return self.hyperparameters["rho"]

    @property
    def grad_evals_per_step(self) -> int:
        return 2

    def _perturb(self, params: list[Tensor]) -> None:
        ascent_step(
            params,
            self._grads(params),
            self.rho,
            adaptive=self.hyperparameters["adaptive"],
            adaptive_eta=self.hyperparameters["adaptive_eta"],
        )

    def _algorithm(self) -> Generator[str, Any, float]:
        params, origin = self._snapshot()
        try:
            clean_loss = yield "clean"  # logged only: read after the perturbed loss (one host sync per step)
            clean_loss = clean_loss.detach() if isinstance(clean_loss, torch.Tensor) else clean_loss
            self._perturb(params)
            perturbed_loss = self._loss_value((yield "perturbed"))
            clean_loss = self._local_loss_value(clean_loss)
        finally:
            self._restore(params, origin)
        self.last_step = StepDiagnostics.single_point(perturbed_loss, clean_loss=clean_loss)
        return perturbed_loss

    # -------------------------------------------------- davda54/sam-compatible two-call API
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Ascend from theta using the gradient already in ``.grad`` (the caller's first backward)."""
        params, origin = self._snapshot()
        self._perturb(params)
        self._pending = (params, origin)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore theta exactly and step the base optimizer with the gradient at ``theta + eps``."""
        if self._pending is None:
            raise RuntimeError("second_step() called without a preceding first_step()")
        params, origin = self._pending
        self._pending = None
        self._restore(params, origin)
        self.base_step()
        self.step_count += 1
        if zero_grad:
            self.zero_grad()
