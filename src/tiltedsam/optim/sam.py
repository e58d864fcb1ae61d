"""SAM (Foret et al. 2021) and its adaptive variant ASAM (Kwon et al. 2021)."""

from __future__ import annotations

import math
from typing import Any, Generator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..functional import ascent_step, check_hyperparameter, global_norm, restore, snapshot
from ..tilt import NonFiniteLossError
from .base import PERTURBED, Point, PerturbationOptimizer, Request, StepDiagnostics, _hyperparameter

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
    the same way (the caller runs forward/backward in between), and, as there, a param group may carry
    its own ``rho`` and ``adaptive`` (and ``adaptive_eta``): ``SAM([{"params": body}, {"params": head,
    "rho": 0.1}], rho=0.05)``. A group without them uses the optimizer's values (``rho=``, ...) at each
    step; the norm in the denominator stays global over all groups, each group scaled by its own ``T``.

    **ASAM.** ``adaptive_eta`` defaults to ``0.01``, the ``eta`` of the ASAM paper (Kwon et al. 2021);
    davda54/sam's ``adaptive=True`` uses ``T = |theta|``: pass ``adaptive_eta=0`` for exactly that update.

    **Non-finite losses.** A NaN/inf loss at either point raises
    :class:`~tiltedsam.tilt.NonFiniteLossError` with the parameters restored and no step taken (the only
    policy: the update is the gradient at one point). :meth:`first_step` raises it when the gradient
    norm is non-finite, before moving the parameters.
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
        rho = check_hyperparameter("rho", rho, low=0.0)
        check_hyperparameter("adaptive", adaptive, choices=(True, False))
        adaptive_eta = check_hyperparameter("adaptive_eta", adaptive_eta, low=0.0)
        hyper = {"rho": rho, "adaptive": adaptive, "adaptive_eta": adaptive_eta}
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, **base_kwargs)
        self._pending: tuple[list[Tensor], list[Tensor]] | None = None

    #: the evaluation at theta only sets the ascent direction (per-rank under m-sharpness)
    has_ascent_only_evaluations = True
    _CLEAN = Request(Point.CLEAN, ascent_only=True)

    rho = _hyperparameter("rho")
    fixed_evaluations = 2

    #: settings a param group may override (davda54/sam style); the rest are optimizer-wide
    group_settings = ("rho", "adaptive", "adaptive_eta")

    def _check_group(self, group: dict[str, Any], index: int) -> None:
        own = {key: group[key] for key in self.group_settings if key in group}
        base = {key: value for key, value in group.items() if key not in own}
        super()._check_group(base, index)
        where = f" (param group {index})"
        for key in ("rho", "adaptive_eta"):
            if key in own:
                check_hyperparameter(key + where, own[key], low=0.0)
        if "adaptive" in own:
            check_hyperparameter("adaptive" + where, own["adaptive"], choices=(True, False))

    def _group_values(self, key: str) -> list[Any]:
        """One value of ``key`` per trainable parameter: its group's own, else the optimizer's."""
        default = self.hyperparameters[key]
        return [group.get(key, default) for group in self.param_groups
                for p in group["params"] if p.requires_grad]

    def _perturb(self, params: list[Tensor]) -> None:
        if any(key in group for group in self.param_groups for key in self.group_settings):
            rho: Any = self._group_values("rho")
            adaptive: Any = self._group_values("adaptive")
            adaptive_eta: Any = self._group_values("adaptive_eta")
        else:
            rho = self.rho
            adaptive = self.hyperparameters["adaptive"]
            adaptive_eta = self.hyperparameters["adaptive_eta"]
        ascent_step(params, self._grads(params), rho, adaptive=adaptive, adaptive_eta=adaptive_eta)

    def _program(self, params, origin) -> Generator[Request, Any, tuple[None, StepDiagnostics]]:
        clean_loss = yield self._CLEAN  # logged only: read after the perturbed loss (one host sync per step)
        clean_loss = clean_loss.detach() if isinstance(clean_loss, torch.Tensor) else clean_loss
        self._perturb(params)
        perturbed_loss = self._loss_value((yield PERTURBED))
        clean_loss = self._local_loss_value(clean_loss)
        return None, StepDiagnostics.single_point(perturbed_loss, clean_loss=clean_loss)

    # -------------------------------------------------- davda54/sam-compatible two-call API
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Ascend from theta using the gradient already in ``.grad`` (the caller's first backward);
        a NaN/inf gradient norm raises :class:`~tiltedsam.tilt.NonFiniteLossError` (parameters untouched)."""
        params = self._trainable()
        origin = snapshot(params)
        norm = float(global_norm(self._grads(params)))
        if not math.isfinite(norm):
            raise NonFiniteLossError(
                f"SAM.first_step: the gradient norm is {norm} (a non-finite loss or gradient); the parameters "
                "were not moved. Lower the learning rate, check the data, or clip gradients"
            )
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
        restore(params, origin)
        self.base_step()
        self.step_count += 1
        if zero_grad:
            self.zero_grad()
