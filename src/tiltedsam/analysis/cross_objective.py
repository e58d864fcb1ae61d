r"""Cross-objective evaluation (the TSAM paper, App. Table 3): every model measured on ERM, SAM and TSAM.

For a model at :math:`\theta` and data :math:`D`:

* **ERM** :math:`L(\theta)`, the mean loss over the data.
* **SAM** :math:`\max_{\lVert\epsilon\rVert\le\rho} L(\theta+\epsilon)` (Eq. 2), approximated from below
  the way SAM does it: along the normalised *full-data* gradient :math:`u = g/\lVert g\rVert`,
  :math:`g = \nabla L(\theta)` over all of ``data``, the largest of :math:`L(\theta + s u)` for
  :math:`s \in \{0, \rho/m, 2\rho/m, \dots, \rho\}` (``ascent_steps = m``; ``m = 1`` is exactly SAM's
  one ascent step, more steps guard against overshooting on curved losses). A line search, not a
  global max: it is a lower bound of Eq. 2, exact when the loss is increasing along the gradient
  direction and that direction is the worst one (e.g. an isotropic quadratic).
* **TSAM** :math:`L^t(\theta) = \frac1t \log \mathbb E_\epsilon[e^{tL(\theta+\epsilon)}]` (Eq. 3),
  Monte-Carlo over ``num_draws`` perturbations from the paper's :math:`\mu` (``noise="uniform"``:
  uniform in the ball :math:`\lVert\epsilon\rVert \le` ``radius``, default :math:`\rho`) or the authors'
  clipped Gaussian (``noise="gaussian"``), estimated with the stable :func:`tiltedsam.tilt.tilted_mean`
  and a bootstrap standard error. With ``antithetic=True`` (default) draws come in pairs
  :math:`\pm\epsilon` (the distribution is symmetric, so the estimator stays consistent); for a
  convex loss each pair averages to at least :math:`L(\theta)`, so the estimate is never below ERM,
  and in general the linear term cancels, which lowers the variance.

  ``sampler="ascent"`` instead draws the points TSAM trains on (Algorithm 2): noise :math:`\delta_j`
  of norm at most ``radius``, then one normalised ascent step from there,
  :math:`\epsilon_j = \delta_j + \rho\,\nabla L(\theta+\delta_j)/\lVert\nabla L(\theta+\delta_j)\rVert`
  (gradient over all of ``data``), and reports the tilted mean of :math:`L(\theta+\epsilon_j)`. Random
  directions of a small radius barely change the loss of a network with many parameters (a random
  direction is nearly orthogonal to the few sharp ones), so the ball estimate of a trained network
  is often indistinguishable from ERM; the ascent points are where TSAM's objective is actually
  probed in training, and this is the default of the flatness report. It costs one gradient more per
  draw and has no ordering guarantee against the SAM column (its points may lie outside the
  :math:`\rho`-ball).

Because :math:`L^t` is non-decreasing in :math:`t` (App. B.3), :math:`L^0 = \mathbb E[L(\theta+\epsilon)]
\le L^t \le \max_j L(\theta+\epsilon_j) \le \max_{\lVert\epsilon\rVert\le\rho} L(\theta+\epsilon)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..functional import NOISE_KINDS, NORM_EPS, draw_noise, global_norm
from ..tilt import check_tilt, effective_sample_size, tilted_mean, tilted_weights
from ._common import (
    ResultMixin,
    LossFn,
    as_batches,
    check_mode,
    check_nonnegative_float,
    check_positive_int,
    mean_gradient,
    mean_loss,
    preserved_model_state,
    progress_bar,
    trainable_parameters,
)
from .neighborhood import bootstrap_standard_errors

__all__ = ["cross_objective", "ObjectiveLosses", "cross_objective_table", "CrossObjectiveTable", "OBJECTIVES",
           "TSAM_SAMPLERS"]

OBJECTIVES = ("ERM", "SAM", "TSAM")
TSAM_SAMPLERS = ("ball", "ascent")


@dataclass
class ObjectiveLosses(ResultMixin):
    """One model on one data split under the three objectives."""

    erm: float
    sam: float
    tsam: float
    tsam_se: float  # bootstrap standard error of the Monte-Carlo L^t
    tsam_expected: float  # the t = 0 member, E[L(theta + eps)], from the same draws
    tsam_effective_sample_size: float
    sam_step: float  # the step size s <= rho along the gradient that gave the SAM value (0: none ascended)
    gradient_norm: float  # ||grad L(theta)|| over the data
    num_loss_evaluations: int
    seconds: float
    sampler: str = "ball"  # how the TSAM draws were made: "ball" (Eq. 3's mu) or "ascent" (Algorithm 2)

    def value(self, objective: str) -> float:
        return {"ERM": self.erm, "SAM": self.sam, "TSAM": self.tsam}[objective]


def _check_sampler(sampler: str) -> str:
    if sampler not in TSAM_SAMPLERS:
        raise ValueError(f"sampler must be one of {TSAM_SAMPLERS}, got {sampler!r}")
    return sampler


def _check_noise(noise: str) -> str:
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {noise!r}")
    return noise


def cross_objective(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    rho: float = 0.05,
    ascent_steps: int = 4,
    tilt: float = 20.0,
    radius: float | None = None,
    noise: str = "uniform",
    sampler: str = "ball",
    num_draws: int = 32,
    antithetic: bool = True,
    seed: int = 0,
    mode: str = "eval",
    params: Sequence[Tensor] | None = None,
    max_batches: int | None = None,
    num_bootstrap: int = 200,
    progress: bool | None = None,
) -> ObjectiveLosses:
    r"""ERM, SAM and TSAM losses of ``model`` on ``data`` (see the module docstring for the definitions).

    Costs one gradient and ``1 + ascent_steps + num_draws`` loss evaluations over ``data`` (plus one
    gradient per draw with ``sampler="ascent"``, where ``antithetic`` does not apply).
    ``data``/``mode``/``params``/``max_batches`` as in :func:`neighborhood_loss`; the model is restored.
    """
    check_mode(mode)
    rho = check_nonnegative_float("rho", rho)
    ascent_steps = check_positive_int("ascent_steps", ascent_steps)
    tilt = check_tilt(tilt)
    radius = rho if radius is None else check_nonnegative_float("radius", radius)
    _check_noise(noise)
    _check_sampler(sampler)
    if not isinstance(antithetic, bool):
        raise ValueError(f"antithetic must be True or False, got {antithetic!r}")
    antithetic = antithetic and sampler == "ball"
    num_draws = check_positive_int("num_draws", num_draws, minimum=2 if antithetic else 1)
    if antithetic and num_draws % 2:
        raise ValueError(f"num_draws must be even with antithetic=True (draws come in +/- pairs), got {num_draws}")
    batches = as_batches(data, max_batches)
    start = time.perf_counter()
    with preserved_model_state(model, mode):
        chosen = trainable_parameters(model, params)
        origin = [p.detach().clone() for p in chosen]

        def evaluate_at(offset: list[Tensor], sign: float = 1.0) -> float:
            with torch.no_grad():
                torch._foreach_copy_(chosen, origin)
                torch._foreach_add_(chosen, offset, alpha=sign)
            return mean_loss(model, loss_fn, batches)

        erm = mean_loss(model, loss_fn, batches)
        gradient = mean_gradient(model, loss_fn, batches, chosen)
        gradient_norm = float(global_norm(gradient))
        sam, sam_step = erm, 0.0
        if gradient_norm > 0 and rho > 0:
            direction = [g / (gradient_norm + NORM_EPS) for g in gradient]
            for i in range(1, ascent_steps + 1):
                step = rho * i / ascent_steps
                value = evaluate_at([d * step for d in direction])
                if value > sam:
                    sam, sam_step = value, step
        generator = torch.Generator().manual_seed(seed)
        units = num_draws // 2 if antithetic else num_draws
        losses = torch.empty(units, 2 if antithetic else 1, dtype=torch.float64)
        bar = progress_bar(num_draws, "TSAM loss draws", progress)
        try:
            for j in range(units):
                epsilon = draw_noise(chosen, noise, radius, generator)
                if sampler == "ascent":  # Algorithm 2: ascend from theta + delta_j
                    with torch.no_grad():
                        torch._foreach_copy_(chosen, origin)
                        torch._foreach_add_(chosen, epsilon)
                    at_noise = mean_gradient(model, loss_fn, batches, chosen)
                    scale = rho / (float(global_norm(at_noise)) + NORM_EPS)
                    torch._foreach_add_(epsilon, at_noise, alpha=scale)
                losses[j, 0] = evaluate_at(epsilon)
                bar.update(1)
                if antithetic:
                    losses[j, 1] = evaluate_at(epsilon, -1.0)
                    bar.update(1)
        finally:
            bar.close()
    flat = losses.flatten()
    tsam = float(tilted_mean(flat, tilt))
    tsam_se = float(bootstrap_standard_errors(
        losses, lambda v: tilted_mean(v.flatten(-2), tilt).unsqueeze(-1), num_bootstrap,
        torch.Generator().manual_seed(seed + 1),
    )[0])
    return ObjectiveLosses(
        erm=erm,
        sam=sam,
        tsam=tsam,
        tsam_se=tsam_se,
        tsam_expected=float(flat.mean()),
        tsam_effective_sample_size=float(effective_sample_size(tilted_weights(flat, tilt))),
        sam_step=sam_step,
        gradient_norm=gradient_norm,
        num_loss_evaluations=1 + (ascent_steps if gradient_norm > 0 and rho > 0 else 0) + num_draws,
        sampler=sampler,
        seconds=time.perf_counter() - start,
    )


@dataclass
class CrossObjectiveTable:
    """Table 3: rows = the model (what it was trained with), columns = the objective it is measured on."""

    rows: dict[str, dict[str, ObjectiveLosses]]  # label -> split ("train"/"test") -> losses
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dict(self.settings),
            "rows": {label: {split: v.to_dict() for split, v in splits.items()} for label, splits in self.rows.items()},
        }

    def splits(self) -> list[str]:
        seen: list[str] = []
        for splits in self.rows.values():
            seen += [s for s in splits if s not in seen]
        return seen

    def to_markdown(self, digits: int = 4) -> str:
        """One Markdown matrix per split; TSAM cells show the Monte-Carlo value ± its standard error."""
        blocks = []
        for split in self.splits():
            lines = [f"**{split} loss** (rows: trained with; columns: evaluated on)", "",
                     "| model | " + " | ".join(OBJECTIVES) + " |", "|---|" + "---:|" * len(OBJECTIVES)]
            for label, splits in self.rows.items():
                if split not in splits:
                    continue
                v = splits[split]
                tsam = f"{v.tsam:.{digits}f} ± {v.tsam_se:.{digits}f}" if math.isfinite(v.tsam_se) else f"{v.tsam:.{digits}f}"
                lines.append(f"| {label} | {v.erm:.{digits}f} | {v.sam:.{digits}f} | {tsam} |")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"


def cross_objective_table(
    models: Mapping[str, tuple[nn.Module, LossFn, Any, Any]],
    **settings: Any,
) -> CrossObjectiveTable:
    """Table 3 for several models: ``models`` maps a label to ``(model, loss_fn, train_data, test_data)``
    (``test_data`` may be ``None``); ``settings`` go to :func:`cross_objective` (same seed for every
    model, so models of one architecture are measured under the same perturbations)."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty mapping label -> (model, loss_fn, train, test), got {models!r}")
    rows: dict[str, dict[str, ObjectiveLosses]] = {}
    for label, entry in models.items():
        if not isinstance(entry, (tuple, list)) or len(entry) != 4:
            raise ValueError(f"models[{label!r}] must be (model, loss_fn, train_data, test_data), got {entry!r}")
        model, loss_fn, train, test = entry
        rows[label] = {}
        for split, data in (("train", train), ("test", test)):
            if data is not None:
                rows[label][split] = cross_objective(model, loss_fn, data, **settings)
    return CrossObjectiveTable(rows, settings)
