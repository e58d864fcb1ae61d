r"""The ``tilt="auto"`` rule of :class:`~tiltedsam.optim.TSAM` on the 1-D toy problems, computed exactly.

The optimizer's rule (:class:`~tiltedsam.tilt.AutoTilt`): choose the tilt whose weights :math:`w \propto e^{t L(\theta+\epsilon)}`
keep an effective sample size of ``alpha`` times the number of samples, cap it at ``max_tilt``, smooth
``log t`` across steps with an EMA, and use the tilt chosen from the *previous* steps (the first step is
uniform, ``t = 0``). Here the samples are the whole measure ``mu``: the ESS fraction of ``s`` i.i.d.
draws tends, as ``s`` grows, to

.. math:: \mathrm{ESS}/s \to \frac{\mathbb E_\mu[e^{tL}]^2}{\mathbb E_\mu[e^{2tL}]}
          = \exp\big(2\,\mathrm{LSE}_q(tL) - \mathrm{LSE}_q(2tL)\big)

which is computed by the same quadrature as the exact objectives (:func:`~tiltedsam.toy.objectives.quadrature`),
with log-sum-exp shifted by the largest loss. It is non-increasing in ``t`` (the argument of
:func:`tiltedsam.tilt.effective_sample_size_at_tilt`, with quadrature weights), so a bisection finds the
crossing. The toy's exact TSAM gradient weights by ``e^{tL}`` under ``mu`` (``delta = 0``, the naive
sampler of App. C.3), so the chosen aggregation tilt *is* ``t``. A sampled variant applies
:func:`tiltedsam.tilt.tilt_for_ess` to the ``s`` sampled losses of each step, exactly as the optimizer does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..tilt import AutoTilt, check_tilt, largest_tilt_at_least, tilt_for_ess, tilted_weights
from .descent import sample_perturbations
from .objectives import _check_measure, _check_rho, _tsam_gradient, quadrature
from .problems import ToyProblem, as_problem

__all__ = ["population_ess_fraction", "population_tilt_for_ess", "AutoTrajectory", "descend_auto"]


def _log_ess_fraction(values: np.ndarray, q: np.ndarray, tilt: float) -> float:
    live = q > 0
    gaps = values[live] - values[live].max()
    weights = q[live]
    once = np.log(np.sum(weights * np.exp(tilt * gaps)))
    twice = np.log(np.sum(weights * np.exp(2.0 * tilt * gaps)))
    return float(2.0 * once - twice)


def population_ess_fraction(problem: ToyProblem | str, theta: float, rho: float, tilt: float,
                            measure: str = "uniform") -> float:
    r"""``E_mu[e^{tL}]^2 / E_mu[e^{2tL}]`` at ``theta``: the ESS per sample of tilted weights as ``s -> inf``.

    ``1`` at ``t = 0``; non-increasing in ``t``; tends to ``0`` as ``t -> inf`` unless ``L`` is constant
    on the window. ``rho > 0``.
    """
    problem = as_problem(problem)
    rho = _check_rho(rho)
    if rho == 0:
        raise ValueError("rho must be > 0 (a window of width zero has one point: ESS fraction 1 for every t)")
    tilt = check_tilt(tilt)
    if math.isinf(tilt):
        raise ValueError("tilt must be finite here")
    x, q = quadrature(problem, np.array([float(theta)]), rho, _check_measure(measure))
    return math.exp(_log_ess_fraction(problem.value(x[0]), q[0], tilt))


def population_tilt_for_ess(problem: ToyProblem | str, theta: float, rho: float, target_ess: float, *,
                            max_tilt: float, measure: str = "uniform", rel_tol: float = 1e-10) -> float:
    r"""``sup{t in [0, max_tilt] : E[e^{tL}]^2 / E[e^{2tL}] >= target_ess}`` at ``theta`` (bisection).

    The population counterpart of :func:`tiltedsam.tilt.tilt_for_ess`: ``max_tilt`` when even the cap
    keeps the fraction above the target (a flat window), else the unique crossing.
    """
    problem = as_problem(problem)
    x, q = quadrature(problem, np.array([float(theta)]), _check_rho(rho), _check_measure(measure))
    return _bisect(problem.value(x[0]), q[0], target_ess, max_tilt, rel_tol)


def _bisect(values: np.ndarray, q: np.ndarray, target_ess: float, max_tilt: float, rel_tol: float) -> float:
    if not (0.0 < target_ess <= 1.0):
        raise ValueError(f"target_ess must be a fraction in (0, 1], got {target_ess!r}")
    max_tilt = check_tilt(max_tilt, "max_tilt")
    if math.isinf(max_tilt):
        raise ValueError("max_tilt must be finite")
    return largest_tilt_at_least(lambda tilt: _log_ess_fraction(values, q, tilt), math.log(target_ess), max_tilt,
                                 rel_tol)


@dataclass
class AutoTrajectory:
    """Gradient descent with the auto tilt: iterates, the tilt used and chosen at each step, the ESS."""

    num_samples: int | None  # None: exact (quadrature) gradients and ESS
    thetas: np.ndarray = field(repr=False)  # theta_0 .. theta_steps
    tilts: np.ndarray = field(repr=False)  # t used at step k (0 at the first)
    chosen: np.ndarray = field(repr=False)  # step k's own bisection result t*_k
    ess_fraction: np.ndarray = field(repr=False)  # realised ESS / s of step k's weights (population for exact)

    @property
    def label(self) -> str:
        return "TSAM auto (exact)" if self.num_samples is None else f"TSAM auto, s={self.num_samples}"


def descend_auto(problem: ToyProblem | str, start: float, lr: float, steps: int, rho: float, *,
                 target_ess: float = 0.5, max_tilt: float = 1000.0, tilt_smoothing: float = 0.9,
                 num_samples: int | None = None, measure: str = "uniform", seed: int = 0) -> AutoTrajectory:
    r"""Gradient descent on TSAM with the optimizer's ``tilt="auto"`` rule.

    At step ``k``: use ``t_k = min(exp(m_{k-1}), max_tilt)`` (``t_0 = 0``), step
    ``theta <- theta - lr * g_{t_k}(theta)`` with the exact gradient of Eq. 4 (``num_samples=None``) or the
    sampled estimator with ``s`` draws from ``mu``; then find ``t*_k`` for the current ``theta``'s losses
    (population ESS fraction, or :func:`~tiltedsam.tilt.tilt_for_ess` of the ``s`` sampled losses) and
    update ``m_k = beta m_{k-1} + (1 - beta) log t*_k`` (``m_0 = log t*_0``).
    """
    problem = as_problem(problem)
    rho = _check_rho(rho)
    measure = _check_measure(measure)
    if rho == 0:
        raise ValueError("rho must be > 0 for the auto tilt (no neighbourhood, nothing to weight)")
    auto = AutoTilt(target_ess, tilt_smoothing)  # the optimizer's rule: the bisection result, smoothed in log space
    generator = torch.Generator().manual_seed(int(seed))
    thetas = np.empty(steps + 1)
    thetas[0] = float(start)
    tilts, chosen, ess = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    for k in range(steps):
        theta = thetas[k]
        tilt = auto.next_tilt(max_tilt)
        if num_samples is None:
            x, q = quadrature(problem, np.array([theta]), rho, measure)
            values = problem.value(x[0])
            gradient = float(_tsam_gradient(problem, np.array([theta]), rho, np.array([tilt]), measure)[0])
            ess[k] = math.exp(_log_ess_fraction(values, q[0], tilt))
            star = _bisect(values, q[0], target_ess, max_tilt, 1e-10)
        else:
            eps = sample_perturbations(num_samples, rho, measure, generator)
            values, slopes = problem.value_and_grad(theta + eps)
            weights = tilted_weights(torch.from_numpy(values), tilt).numpy()
            gradient = float((weights * slopes).sum())
            ess[k] = 1.0 / float((weights**2).sum()) / num_samples
            star = tilt_for_ess(values.tolist(), target_ess, max_tilt=max_tilt)
        tilts[k], chosen[k] = tilt, star
        auto.fold(star)
        thetas[k + 1] = theta - lr * gradient
        if not math.isfinite(thetas[k + 1]):
            raise ValueError(f"gradient descent diverged at step {k + 1}; lr={lr} is too large")
    return AutoTrajectory(num_samples, thetas, tilts, chosen, ess)


def run_fig1_auto(out_dir: str, *, problem: str | ToyProblem = "fig1", rho: float = 0.2, lr: float = 0.005,
                  steps: int = 2000, start: float = 0.5, target_ess: float = 0.5, max_tilt: float = 1000.0,
                  tilt_smoothing: float = 0.9, samples: tuple[int, ...] = (10, 1000), seed: int = 0,
                  measure: str = "uniform") -> "ToyReport":
    """``tiltedsam toy fig1 --tilt auto``: Fig. 1's descent with the auto tilt, exact and sampled.

    Writes ``fig1_auto.png`` (left: ``L`` with each run's path and end point and the exact run's TSAM
    objective at its final tilt; middle: the tilt used at each step, with the cap; right: the realised
    ESS per sample against the target) and ``fig1_auto.{md,csv}`` (per run: final θ, ``L``, the final and
    the last-10%-mean tilt, the mean realised ESS fraction).
    """
    import time
    from pathlib import Path

    from .._atomic import atomic_write_with
    from .figures import ToyReport, _panel_figure, _write_table
    from .objectives import objective

    began = time.perf_counter()
    problem = as_problem(problem)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    report = ToyReport()
    settings = dict(target_ess=target_ess, max_tilt=max_tilt, tilt_smoothing=tilt_smoothing, measure=measure)
    runs = [descend_auto(problem, start, lr, steps, rho, **settings)]
    runs += [descend_auto(problem, start, lr, steps, rho, num_samples=int(s), seed=seed, **settings)
             for s in samples]
    tail = max(1, steps // 10)
    header = ["run", "final θ", "L(final θ)", "final t", "mean t, last 10% of steps", "mean ESS / s"]
    rows = [[r.label, float(r.thetas[-1]), float(problem.value(r.thetas[-1])), float(r.tilts[-1]),
             float(np.mean(r.tilts[-tail:])), float(np.mean(r.ess_fraction[1:]))] for r in runs]
    _write_table(folder, "fig1_auto", header, rows, report,
                 f"Fig. 1 with tilt='auto' (target ESS {target_ess:g} of s, cap {max_tilt:g}, EMA {tilt_smoothing:g}; "
                 f"rho={rho:g}, lr={lr:g}, {steps} steps from θ={start:g}, mu {measure})")

    figure, axes = _panel_figure(3, panel_size=(4.2, 3.2))
    grid = np.linspace(0.2, 2.5, 600)
    ax = axes[0]
    ax.plot(grid, problem.value(grid), color="tab:blue", label="L(θ)")
    exact_tilt = float(runs[0].tilts[-1])
    ax.plot(grid, objective(problem, "tsam", grid, rho, exact_tilt, measure), color="tab:red", linestyle="--",
            label=f"TSAM objective, t={exact_tilt:.3g}")
    colours = ["tab:orange", "tab:purple", "tab:brown", "tab:olive"]
    for r, colour in zip(runs, colours):
        ax.plot(r.thetas, problem.value(r.thetas), color=colour, linewidth=1, alpha=0.6)
        ax.plot([r.thetas[-1]], [problem.value(r.thetas[-1])], marker="*", markersize=11, color=colour,
                linestyle="none", label=r.label.replace("TSAM auto", "auto"))
    ax.plot([start], [problem.value(start)], "ko", label="start")
    ax.set_xlabel("θ")
    ax.set_ylabel("loss")
    ax.set_title("paths on L(θ)", fontsize=9)
    ax = axes[1]
    step_axis = np.arange(steps)
    for r, colour in zip(runs, colours):  # the exact run on top, dashed: s=1000 lies almost on it
        exact = r.num_samples is None
        ax.plot(step_axis[1:], r.tilts[1:], color=colour, linewidth=1.6 if exact else 1, zorder=3 if exact else 2,
                linestyle="--" if exact else "-", label=r.label.replace("TSAM auto", "auto"))
    ax.axhline(max_tilt, color="grey", linestyle=":", label=f"cap max_tilt={max_tilt:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("tilt t used (log scale)")
    ax.set_title("the chosen tilt", fontsize=9)
    ax = axes[2]
    for r, colour in zip(runs, colours):
        exact = r.num_samples is None
        ax.plot(step_axis, r.ess_fraction, color=colour, linewidth=1.6 if exact else 0.8, zorder=3 if exact else 2,
                linestyle="--" if exact else "-", alpha=1.0 if exact else 0.7)
    ax.axhline(target_ess, color="black", linestyle=":", label=f"target ESS / s = {target_ess:g}")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("realised ESS / s (exact: s → ∞)")
    ax.set_title("effective sample size of the weights", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    figure.suptitle(f"Fig. 1 loss, TSAM with tilt='auto': target ESS {target_ess:g}·s, cap {max_tilt:g} "
                    f"(ρ={rho:g}, μ {measure}, lr {lr:g})", fontsize=10)
    report.files.append(atomic_write_with(folder / "fig1_auto.png",
                                          lambda tmp: figure.savefig(tmp, format="png", dpi=110)))
    report.seconds = time.perf_counter() - began
    return report
