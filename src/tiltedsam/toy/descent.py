r"""Gradient descent on the exact (or sampled) ERM / SAM / TSAM objectives of a 1-D loss.

``descend`` runs :math:`\theta_{k+1} = \theta_k - \eta\, g(\theta_k)` with ``g`` one of

* the exact gradient of the objective (:func:`tiltedsam.toy.objectives.gradient`; Eq. 4 for TSAM,
  Danskin's theorem for SAM);
* ``kind="sam-ascent"``: the practical SAM step of Foret et al., ``L'(theta + rho sign L'(theta))``
  (one normalised ascent step; in 1-D the normalised gradient is its sign);
* the sampled TSAM estimator (``num_samples = s``): draw :math:`\epsilon_1..\epsilon_s \sim \mu`
  afresh at every step and use :math:`\sum_j w_j L'(\theta+\epsilon_j)` with
  :math:`w = \operatorname{softmax}(t L(\theta+\epsilon_j))` (the naive sampler of App. C.3, Eq. 75;
  the weights come from :func:`tiltedsam.tilt.tilted_weights`). ``kind="sam"`` with samples is the
  same estimator with ``t = inf``: the gradient at the worst of the ``s`` perturbations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..tilt import tilted_weights
from .objectives import (
    GAUSSIAN_STD_FRACTION,
    _check_measure,
    _check_rho,
    _resolve_tilt,
    _sam_gradient,
    _tsam_gradient,
    neighbourhood_stats,
    objective,
)
from .problems import ToyProblem, as_problem

__all__ = ["DESCENT_KINDS", "Run", "Trajectory", "descend", "descend_many", "sample_perturbations"]

#: what ``descend`` accepts as ``kind``: the three objectives and the practical SAM update
DESCENT_KINDS = ("erm", "sam", "tsam", "sam-ascent")


@dataclass
class Trajectory:
    """One gradient-descent run and the summary statistics of where it ended."""

    problem: str
    kind: str
    rho: float
    tilt: float | None
    lr: float
    steps: int
    start: float
    measure: str
    num_samples: int | None
    seed: int | None
    thetas: np.ndarray = field(repr=False)  # theta_0 .. theta_steps
    final_theta: float = math.nan
    final_loss: float = math.nan  # L(final theta)
    final_objective: float = math.nan  # the run's objective at the final theta (SAM's for sam-ascent)
    neighbourhood_mean: float = math.nan  # E_mu L(theta + eps) at the final theta
    neighbourhood_variance: float = math.nan  # var_mu L(theta + eps): Def. 3 with t = 0

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``TSAM t=5`` or ``TSAM t=5, s=10``."""
        names = {"erm": "ERM", "sam": "SAM", "tsam": "TSAM", "sam-ascent": "SAM (ascent step)"}
        text = names[self.kind]
        if self.kind == "tsam":
            text += f" t={_format_number(self.tilt)}"
        if self.num_samples is not None:
            text += f", s={self.num_samples}"
        return text

    @property
    def converged_spread(self) -> float:
        """Range of theta over the last 10% of the steps (0 for a converged run; large if it cycles)."""
        tail = self.thetas[-max(2, len(self.thetas) // 10) :]
        return float(tail.max() - tail.min())


def _format_number(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:g}"


def sample_perturbations(num_samples: int, rho: float, measure: str, generator: torch.Generator) -> np.ndarray:
    """``num_samples`` i.i.d. draws of ``eps ~ mu`` (uniform on [-rho, rho], or the truncated Gaussian)."""
    uniform = torch.rand(num_samples, generator=generator, dtype=torch.float64)
    if measure == "uniform":
        return ((2 * uniform - 1) * rho).numpy()
    # inverse CDF of N(0, std^2) restricted to [-rho, rho]
    std = GAUSSIAN_STD_FRACTION * rho
    edge = torch.special.ndtr(torch.tensor(rho / std, dtype=torch.float64))
    probability = (1 - edge) + uniform * (2 * edge - 1)
    return (std * torch.special.ndtri(probability)).numpy()


class Run(NamedTuple):
    """One trajectory of a :func:`descend_many` batch: the objective, its tilt, and sampling."""

    kind: str
    tilt: float | None = None
    num_samples: int | None = None


def _check_run(run: Run) -> Run:
    kind, tilt, num_samples = run
    if kind not in DESCENT_KINDS:
        raise ValueError(f"kind must be one of {DESCENT_KINDS}, got {kind!r}")
    tilt = _resolve_tilt(kind, tilt)
    if num_samples is not None:
        if kind not in ("sam", "tsam"):
            raise ValueError(f"num_samples applies to kind 'sam' or 'tsam' only, got kind={kind!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1 (or None for exact gradients), got {num_samples!r}")
        num_samples = int(num_samples)
    return Run(kind, tilt, num_samples)


def descend(
    problem: str | ToyProblem | Callable,
    kind: str,
    start: float,
    lr: float,
    steps: int,
    rho: float,
    tilt: float | None = None,
    *,
    measure: str = "uniform",
    num_samples: int | None = None,
    seed: int = 0,
) -> Trajectory:
    r"""Run ``steps`` steps of gradient descent on the ``kind`` objective from ``start``.

    ``kind`` is ``"erm"``, ``"sam"``, ``"tsam"`` (exact gradients unless ``num_samples`` is given) or
    ``"sam-ascent"`` (Foret et al.'s update). Returns a :class:`Trajectory` holding every iterate and,
    at the final point, ``L``, the objective and the neighbourhood mean and variance of
    :math:`L(\theta+\epsilon)` under the same ``mu`` and ``rho`` (Def. 3 with ``t = 0``).
    Raises ``ValueError`` if an iterate stops being finite (learning rate too large).
    """
    run = Run(kind, tilt, num_samples)
    return descend_many(problem, [run], start, lr, steps, rho, measure=measure, seed=seed)[0]


def descend_many(
    problem: str | ToyProblem | Callable,
    runs: Sequence[Run | tuple],
    start: float,
    lr: float,
    steps: int,
    rho: float,
    *,
    measure: str = "uniform",
    seed: int = 0,
    progress: bool = False,
) -> list[Trajectory]:
    """Several :func:`descend` runs from the same start, stepped together (same results, less time).

    Runs of a kind are evaluated in one vectorised call per step (all exact TSAM tilts together).
    Every sampled run draws its perturbations from a generator seeded with ``seed``, so a run's
    trajectory does not depend on what else is in the batch, and runs with the same
    ``num_samples`` see the same perturbations (common random numbers).
    """
    problem = as_problem(problem)
    runs = [_check_run(Run(*r)) for r in runs]
    rho = _check_rho(rho)
    measure = _check_measure(measure)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    start = float(start)
    if not math.isfinite(start):
        raise ValueError(f"start must be finite, got {start!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")

    def rows(condition: Callable[[Run], bool]) -> np.ndarray:
        return np.array([i for i, r in enumerate(runs) if condition(r)], dtype=np.intp)

    sampled = rows(lambda r: r.num_samples is not None and rho > 0)
    plain = rows(lambda r: r.num_samples is None or rho == 0)
    erm = np.intersect1d(plain, rows(lambda r: r.kind == "erm" or rho == 0))
    ascent = np.setdiff1d(np.intersect1d(plain, rows(lambda r: r.kind == "sam-ascent")), erm)
    sam = np.setdiff1d(
        np.intersect1d(plain, rows(lambda r: r.kind == "sam" or (r.kind == "tsam" and math.isinf(r.tilt)))), erm
    )
    tsam = np.setdiff1d(np.setdiff1d(np.setdiff1d(plain, erm), ascent), sam)
    tsam_tilts = np.array([runs[i].tilt for i in tsam], dtype=np.float64)
    # sampled runs with the same number of samples are evaluated together, each with its own generator
    sampled_groups = []
    for num_samples in sorted({runs[i].num_samples for i in sampled}):
        group = np.array([i for i in sampled if runs[i].num_samples == num_samples], dtype=np.intp)
        group_tilts = np.array([math.inf if runs[i].kind == "sam" else runs[i].tilt for i in group])
        # every run would seed its own generator with `seed`, so all runs of a group draw the same
        # perturbations: one generator per group gives identical results with one draw per step
        sampled_groups.append((group, group_tilts, torch.Generator().manual_seed(int(seed))))

    thetas = np.empty((steps + 1, len(runs)), dtype=np.float64)
    thetas[0] = start
    # the tensors here are tiny: extra intra-op threads only add contention (10x slower on a busy machine)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # disable=None: no bar when stderr is not a terminal (a redirected log gets no carriage-return flood)
        for k in tqdm(range(steps), desc=f"{problem.name} descent", disable=None if progress else True, leave=False,
                      mininterval=0.5):
            theta = thetas[k]
            step_gradient = np.empty(len(runs))
            if len(erm):
                step_gradient[erm] = problem.grad(theta[erm])
            if len(ascent):
                step_gradient[ascent] = problem.grad(theta[ascent] + rho * np.sign(problem.grad(theta[ascent])))
            if len(sam):
                step_gradient[sam] = _sam_gradient(problem, theta[sam], rho)
            if len(tsam):
                step_gradient[tsam] = _tsam_gradient(problem, theta[tsam], rho, tsam_tilts, measure)
            for group, group_tilts, generator in sampled_groups:
                eps = sample_perturbations(runs[group[0]].num_samples, rho, measure, generator)
                step_gradient[group] = _sampled_gradients(problem, theta[group], group_tilts, eps)
            thetas[k + 1] = theta - lr * step_gradient
            if not np.all(np.isfinite(thetas[k + 1])):
                bad = [runs[i] for i in np.flatnonzero(~np.isfinite(thetas[k + 1]))]
                raise ValueError(f"gradient descent diverged at step {k + 1} for {bad}; lr={lr} is too large")
    finally:
        torch.set_num_threads(previous_threads)

    final = thetas[-1]
    means, variances = neighbourhood_stats(problem, final, rho, 0.0, measure)
    trajectories = []
    for i, run in enumerate(runs):
        objective_kind = "sam" if run.kind == "sam-ascent" else run.kind
        trajectories.append(
            Trajectory(
                problem=problem.name,
                kind=run.kind,
                rho=rho,
                tilt=run.tilt,
                lr=lr,
                steps=int(steps),
                start=start,
                measure=measure,
                num_samples=run.num_samples,
                seed=None if run.num_samples is None else int(seed),
                thetas=thetas[:, i].copy(),
                final_theta=float(final[i]),
                final_loss=float(problem.value(final[i])),
                final_objective=float(objective(problem, objective_kind, final[i], rho, run.tilt, measure)),
                neighbourhood_mean=float(np.atleast_1d(means)[i]),
                neighbourhood_variance=float(np.atleast_1d(variances)[i]),
            )
        )
    return trajectories


def _sampled_gradients(problem: ToyProblem, theta: np.ndarray, tilt: np.ndarray, eps: np.ndarray) -> np.ndarray:
    r"""The naive sampled TSAM gradient per row: :math:`\sum_j w_j L'(\theta+\epsilon_j)`, ``w = softmax(t L)``.

    ``theta`` and ``tilt`` have shape ``(R,)``; ``eps`` (shape ``(s,)``) is shared by the rows. The weights are the core's
    :func:`tiltedsam.tilt.tilted_weights`; rows of different finite tilts go through it at once as
    ``tilted_weights(t L, 1)`` (the same softmax), rows with ``t = inf`` separately.
    """
    points = theta[:, None] + eps[None, :]
    values, slopes = problem.value_and_grad(points)
    values = torch.from_numpy(values)
    finite = np.isfinite(tilt)
    if finite.all():
        weights = tilted_weights(values * torch.from_numpy(tilt)[:, None], 1.0)
    else:
        weights = torch.empty_like(values)
        if finite.any():
            mask = torch.from_numpy(finite)
            weights[mask] = tilted_weights(values[mask] * torch.from_numpy(tilt[finite])[:, None], 1.0)
        weights[torch.from_numpy(~finite)] = tilted_weights(values[torch.from_numpy(~finite)], math.inf)
    return (weights.numpy() * slopes).sum(axis=1)
