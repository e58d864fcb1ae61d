r"""Loss statistics in a Gaussian neighbourhood of a solution (the TSAM paper, Sec. 5.2, Fig. 2, Def. 2-3).

For a trained solution :math:`\theta^*` and noise :math:`\epsilon \sim \mathcal N(0, \sigma^2 I)` over all
trainable parameters, the neighbourhood loss :math:`X = L(\theta^* + \epsilon)` is a random variable;
its mean and variance (the paper's "average-loss sharpness", Fig. 2) and its t-weighted mean and
variance (Def. 2; comparing the variances is t-sharpness, Def. 3) measure how flat the solution is.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..functional import draw_noise
from ..tilt import check_tilt, tilted_mean, tilted_stats
from ._common import (
    ResultMixin,
    LossFn,
    as_batches,
    check_mode,
    check_nonnegative_float,
    check_positive_int,
    mean_loss,
    preserved_model_state,
    progress_bar,
    trainable_parameters,
)

__all__ = [
    "neighborhood_loss",
    "NeighborhoodLossResult",
    "SigmaStatistics",
    "TiltedStatistics",
    "sample_mean_variance",
    "bootstrap_standard_errors",
]


@dataclass
class TiltedStatistics:
    """Def. 2 statistics of the neighbourhood loss for one tilt ``t`` (plug-in estimates over the draws)."""

    tilt: float
    mean: float  # t-weighted mean  E[e^{tX} X] / E[e^{tX}]
    mean_se: float
    variance: float  # t-weighted variance (Def. 2); comparing it across solutions is t-sharpness (Def. 3)
    variance_se: float
    objective: float  # the TSAM objective L^t = (1/t) log E[e^{tX}] (Eq. 3) under this noise
    objective_se: float
    effective_sample_size: float  # Kish ESS of the tilted weights: how many draws the estimate rests on


@dataclass
class SigmaStatistics:
    """Neighbourhood-loss statistics at one noise scale ``sigma``."""

    sigma: float
    mean: float  # sample mean of L(theta* + eps)
    mean_se: float  # s / sqrt(n)
    variance: float  # unbiased sample variance (1/(n-1))
    variance_se: float  # sqrt((m4 - s^4 (n-3)/(n-1)) / n), the distribution-free standard error
    losses: list[float]  # the n draws, in order
    tilted: list[TiltedStatistics] = field(default_factory=list)


@dataclass
class NeighborhoodLossResult(ResultMixin):
    clean_loss: float  # L(theta*) without noise
    statistics: list[SigmaStatistics]
    num_draws: int
    mode: str
    seed: int
    num_parameters: int
    seconds: float

    def by_sigma(self, sigma: float) -> SigmaStatistics:
        for stats in self.statistics:
            if stats.sigma == sigma:
                return stats
        raise KeyError(f"sigma {sigma!r} was not measured; measured: {[s.sigma for s in self.statistics]}")


def sample_mean_variance(values: Tensor) -> tuple[float, float, float, float]:
    """Mean, its standard error, unbiased variance and its standard error of 1-D samples.

    Computed on values shifted by the first draw (variance is shift-invariant), which is exact when all
    draws are equal (zero variance, not rounding noise) and avoids cancellation when the spread is small
    compared with the loss.
    """
    x = values.to(torch.float64).flatten()
    n = x.numel()
    shifted = x - x[0]
    centre = shifted.mean()
    mean = float(x[0] + centre)
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    deviations = shifted - centre
    variance = float((deviations**2).sum() / (n - 1))
    fourth = float((deviations**4).mean())
    var_of_variance = max(fourth - variance**2 * (n - 3) / (n - 1), 0.0) / n
    return mean, math.sqrt(variance / n), variance, math.sqrt(var_of_variance)


def bootstrap_standard_errors(
    values: Tensor, statistic: Callable[[Tensor], Tensor], num_bootstrap: int, generator: torch.Generator
) -> Tensor:
    """Bootstrap standard errors of ``statistic`` (maps ``(..., n_units, unit_size)`` to ``(..., k)``).

    ``values`` is ``(n_units, unit_size)``: units (single draws, or antithetic pairs) are resampled
    with replacement ``num_bootstrap`` times in one batched call.
    """
    n_units = values.shape[0]
    if n_units < 2 or num_bootstrap < 2:
        return torch.full_like(statistic(values), math.nan)
    index = torch.randint(n_units, (num_bootstrap, n_units), generator=generator)
    return statistic(values[index]).std(dim=0)


def _tilted_summary(losses: Tensor, tilts: Sequence[float]) -> Tensor:
    """``(..., n)`` losses -> ``(..., len(tilts), 3)`` of [t-weighted mean, t-weighted variance, L^t]."""
    anchor = losses[..., :1]
    shifted = losses - anchor  # Def. 2 and Eq. 3 are shift-equivariant; exact zeros for equal draws
    rows = []
    for tilt in tilts:
        stats = tilted_stats(shifted, tilt)
        objective = tilted_mean(shifted, tilt)
        rows.append(torch.stack([stats.mean + anchor[..., 0], stats.variance, objective + anchor[..., 0]], dim=-1))
    return torch.stack(rows, dim=-2)


def _check_sigmas(sigmas: Any) -> list[float]:
    if isinstance(sigmas, (int, float)) and not isinstance(sigmas, bool):
        sigmas = [sigmas]
    if not isinstance(sigmas, (list, tuple)) or not sigmas:
        raise ValueError(f"sigmas must be a non-empty list of noise scales >= 0, got {sigmas!r}")
    return [check_nonnegative_float("sigmas", s) for s in sigmas]


def _check_tilts(tilt: Any) -> list[float]:
    if tilt is None:
        return []
    if isinstance(tilt, (list, tuple)):
        return [check_tilt(t, "tilt") for t in tilt]
    return [check_tilt(tilt, "tilt")]


def neighborhood_loss(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    sigmas: Sequence[float] | float,
    num_draws: int,
    tilt: float | Sequence[float] | None = None,
    *,
    seed: int = 0,
    mode: str = "eval",
    params: Sequence[Tensor] | None = None,
    max_batches: int | None = None,
    num_bootstrap: int = 200,
    progress: bool | None = None,
) -> NeighborhoodLossResult:
    r"""Mean and variance of :math:`L(\theta^* + \epsilon)`, :math:`\epsilon \sim \mathcal N(0, \sigma^2 I)`.

    For each ``sigma`` it draws ``num_draws`` perturbations of all trainable parameters (or ``params``)
    and evaluates the loss on ``data`` (one ``(inputs, targets)`` batch, a list of batches or a
    DataLoader; with a loader each draw's loss is the sample-weighted mean over the whole loader, or its
    first ``max_batches`` batches). Reported per sigma (Fig. 2 of the paper):

    * ``mean`` :math:`\bar X` with ``mean_se`` :math:`s/\sqrt n`;
    * ``variance`` :math:`s^2` (unbiased) with ``variance_se`` :math:`\sqrt{(m_4 - s^4 (n-3)/(n-1))/n}`;
    * for each ``tilt`` t (Def. 2, Def. 3, Eq. 3, computed with :mod:`tiltedsam.tilt`'s stable math):
      the t-weighted mean :math:`\sum_j w_j X_j`, the t-weighted variance
      :math:`\sum_j w_j (X_j - \mu_t)^2` with :math:`w = \mathrm{softmax}(tX)`, and the TSAM objective
      :math:`\frac1t \log \frac1n \sum_j e^{tX_j}`, with bootstrap standard errors (``num_bootstrap``
      resamples of the draws) and the effective sample size of the weights.

    Common random numbers: every sigma uses the same standard-normal directions ``z_j`` scaled by
    sigma (``epsilon_j = sigma z_j``), and the same ``seed`` gives the same ``z_j`` for every model of
    one architecture, so curves are smooth in sigma and comparisons between solutions are paired.
    ``sigma = 0`` gives zero variance in eval mode. ``mode`` chooses BatchNorm/dropout behaviour
    (``"eval"``: running statistics, no dropout; ``"train"``: batch statistics and dropout noise, which
    then adds to the variance). Parameters, buffers, modes and RNG state are restored afterwards.
    """
    check_mode(mode)
    sigma_list = _check_sigmas(sigmas)
    num_draws = check_positive_int("num_draws", num_draws)
    tilts = _check_tilts(tilt)
    check_positive_int("num_bootstrap", num_bootstrap, minimum=0)
    batches = as_batches(data, max_batches)
    start = time.perf_counter()
    with preserved_model_state(model, mode):
        chosen = trainable_parameters(model, params)
        origin = [p.detach().clone() for p in chosen]
        clean_loss = mean_loss(model, loss_fn, batches)
        results: list[SigmaStatistics] = []
        bar = progress_bar(len(sigma_list) * num_draws, "neighbourhood loss", progress)
        try:
            for sigma in sigma_list:
                generator = torch.Generator().manual_seed(seed)  # same z_j for every sigma
                losses = []
                for _ in range(num_draws):
                    noise = draw_noise(chosen, "gaussian", math.inf, generator, std=sigma)
                    with torch.no_grad():
                        torch._foreach_copy_(chosen, origin)
                        torch._foreach_add_(chosen, noise)
                    losses.append(mean_loss(model, loss_fn, batches))
                    bar.update(1)
                results.append(_summarise(sigma, torch.tensor(losses, dtype=torch.float64), tilts, num_bootstrap, seed))
        finally:
            bar.close()
    return NeighborhoodLossResult(
        clean_loss=clean_loss,
        statistics=results,
        num_draws=num_draws,
        mode=mode,
        seed=seed,
        num_parameters=sum(p.numel() for p in chosen),
        seconds=time.perf_counter() - start,
    )


def _summarise(sigma: float, losses: Tensor, tilts: list[float], num_bootstrap: int, seed: int) -> SigmaStatistics:
    mean, mean_se, variance, variance_se = sample_mean_variance(losses)
    stats = SigmaStatistics(sigma, mean, mean_se, variance, variance_se, losses.tolist())
    if tilts:
        point = _tilted_summary(losses, tilts)
        generator = torch.Generator().manual_seed(seed + 1)
        errors = bootstrap_standard_errors(
            losses.unsqueeze(-1), lambda v: _tilted_summary(v.flatten(-2), tilts), num_bootstrap, generator
        )
        for i, t in enumerate(tilts):
            ess = float(tilted_stats(losses - losses[0], t).effective_sample_size)
            stats.tilted.append(
                TiltedStatistics(
                    tilt=t,
                    mean=float(point[i, 0]),
                    mean_se=float(errors[i, 0]),
                    variance=float(point[i, 1]),
                    variance_se=float(errors[i, 1]),
                    objective=float(point[i, 2]),
                    objective_se=float(errors[i, 2]),
                    effective_sample_size=ess,
                )
            )
    return stats
