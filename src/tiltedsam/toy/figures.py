"""Figures and tables of the toy problems: the paper's Fig. 1 (Sec. 3.2) and Fig. 5 and 6 (App. A).

:func:`run_fig1` runs gradient descent on every objective from one start (exact gradients, then
the sampled TSAM estimator) and writes ``fig1.png``, ``fig1_sampled.png``,
``fig1_trajectories.{md,csv}`` and ``fig1_minimisers.{md,csv}``. :func:`run_objective_sweep`
draws one objective for a range of ``rho`` and writes ``fig5.png`` / ``fig6.png`` with
``*_minimisers.{md,csv}``. Every file is written atomically (temporary file, then ``os.replace``);
figures use matplotlib's Agg canvas without touching the global backend.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .._atomic import atomic_write_with as _atomic_write
from .._tables import csv_text
from .._tables import markdown_table as _markdown_table
from .descent import Run, Trajectory, _format_number, descend_many
from .objectives import Minimiser, global_minimiser, neighbourhood_stats, objective
from .problems import ToyProblem, as_problem

__all__ = [
    "FIG1_TILTS",
    "FIG1_SAMPLES",
    "SWEEP_RHOS",
    "ToyReport",
    "run_fig1",
    "run_objective_sweep",
    "markdown_table",
]

#: defaults of Fig. 1: the tilts of the paper's experiments (App. C.1) plus t = 10
FIG1_TILTS = (0.0, 1.0, 5.0, 10.0, 20.0, 100.0)
#: sample sizes of the sampled TSAM runs (the paper's Fig. 1 used "thousands")
FIG1_SAMPLES = (10, 1000)
#: the rho values of Fig. 5 and 6
SWEEP_RHOS = tuple(round(0.1 * i, 1) for i in range(9))

_CURVE_POINTS = 600
_COLOURS = {"loss": "tab:blue", "objective": "tab:red", "path": "tab:orange", "minimiser": "tab:green"}


@dataclass
class ToyReport:
    """What a ``tiltedsam toy`` command produced: written files, Markdown tables, wall time."""

    files: list[Path] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)  # title -> Markdown table
    seconds: float = 0.0


# ----------------------------------------------------------------------------- atomic writers


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write_table(folder: Path, stem: str, header: Sequence[str], rows: Sequence[Sequence], report: ToyReport, title: str) -> None:
    table = markdown_table(header, rows)
    report.files.append(_write_text(folder / f"{stem}.csv", csv_text(header, rows)))
    report.files.append(_write_text(folder / f"{stem}.md", f"# {title}\n\n{table}\n"))
    report.tables[title] = table


def _finish_figure(figure, panels: list, title: str, path: Path) -> Path:
    """Add the title and one legend (every label drawn in any panel, below them), then save."""
    handles = {}
    for ax in panels:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(7, len(handles)),
                  fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    return _atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))


def _panel_figure(count: int, panel_size: tuple[float, float] = (3.6, 2.9)):
    """A figure with ``count`` panels, three to a row; returns it and the list of used axes."""
    from matplotlib.figure import Figure  # Agg canvas by default, no pyplot state

    cols = min(3, count)
    rows = math.ceil(count / cols)
    width, height = panel_size[0] * cols, panel_size[1] * rows + 1.1
    figure = Figure(figsize=(width, height))
    axes = figure.subplots(rows, cols, squeeze=False)
    # fixed margins: a constrained layout costs more than all the numerics of a figure
    figure.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.85 / height,
                           top=1 - 0.95 / height, wspace=0.32, hspace=0.55 * 2.9 / panel_size[1])
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return figure, list(axes.flat[:count])


# ----------------------------------------------------------------------------- tables


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _tilt_cell(tilt: float | None) -> str | None:
    """Tilts are labels, shown as written: ``0``, ``0.01``, ``5``, ``inf``."""
    return None if tilt is None else _format_number(tilt)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table; floats shown with 4 decimals (scientific below 1e-3)."""
    return _markdown_table(header, rows, cell=_cell)


# ----------------------------------------------------------------------------- Fig. 1


_KIND_NAMES = {"erm": "ERM", "sam": "SAM", "sam-ascent": "SAM (ascent step)", "tsam": "TSAM"}


def _objective_label(kind: str, tilt: float | None) -> str:
    return {"erm": "ERM", "sam": "SAM", "sam-ascent": "SAM", "tsam": f"TSAM t={_format_number(tilt)}"}[kind]


def _draw_path(ax, problem: ToyProblem, trajectory: Trajectory, grid: np.ndarray, curve: np.ndarray | None,
               minimiser: Minimiser | None, reference: Trajectory | None = None) -> None:
    ax.plot(grid, problem.value(grid), color=_COLOURS["loss"], lw=1.2, label="L(θ)")
    if curve is not None:
        ax.plot(grid, curve, color=_COLOURS["objective"], lw=1.0, ls="--", label="objective")
    if reference is not None:
        ax.plot(reference.thetas, problem.value(reference.thetas), color="0.55", lw=0.6, alpha=0.8,
                label="exact-gradient path")
    path = trajectory.thetas
    ax.plot(path, problem.value(path), color=_COLOURS["path"], lw=0.5, alpha=0.7, marker=".", ms=2.5,
            label="trajectory")
    ax.plot(path[0], problem.value(path[0]), "o", color="black", ms=4, label="start")
    ax.plot(trajectory.final_theta, trajectory.final_loss, "*", color=_COLOURS["path"], mec="black", ms=13,
            label="final point")
    if minimiser is not None:
        ax.axvline(minimiser.theta, color=_COLOURS["minimiser"], lw=0.8, ls=":")
        ax.plot(minimiser.theta, minimiser.loss, "v", color=_COLOURS["minimiser"], ms=7,
                label="global minimiser θ* of this panel's objective (on L; dotted line)")
    lo = min(grid[0], float(path.min()))
    hi = max(grid[-1], float(path.max()))
    ax.set_xlim(lo, hi)
    # the loss's range (with the path's): an objective far above it near the domain's edge is cut off
    shown = np.concatenate([problem.value(grid), problem.value(path)])
    span = float(shown.max() - shown.min()) or 1.0
    ax.set_ylim(float(shown.min()) - 0.08 * span, float(shown.max()) + 0.15 * span)
    ax.set_xlabel("θ")
    ax.set_ylabel("L(θ), objective(θ)", fontsize=8)
    _explain_plateau(ax, problem, trajectory)
    ax.set_title(
        f"{trajectory.label}\nfinal θ={trajectory.final_theta:.3f}, L={trajectory.final_loss:.3f}, "
        f"var={trajectory.neighbourhood_variance:.3f}",
        fontsize=9,
    )


def _explain_plateau(ax, problem: ToyProblem, trajectory: Trajectory) -> None:
    """A run that never left its start sits on a plateau of its objective: say why in the panel.

    SAM's objective ``max_{|ε| ≤ ρ} L(θ + ε)`` is constant in θ while the same local peak of ``L``
    stays inside ``[θ − ρ, θ + ρ]``, so its gradient is exactly 0 there; TSAM at a large ``t``
    approaches that maximum, and its gradient is ``O(exp(−t · gap))``. Gradient descent with exact
    gradients started on such a plateau (θ = 0.5 with ρ = 0.2, the paper's start) does not move; the
    sampled estimator and SAM's ascent-step algorithm are noisy enough to leave it.
    """
    path = trajectory.thetas
    if trajectory.kind not in ("sam", "sam-ascent", "tsam") or len(path) < 2 or float(np.ptp(path)) > 1e-3:
        return
    start = float(path[0])
    window = np.linspace(start - trajectory.rho, start + trajectory.rho, 801)
    window = window[(window > problem.domain[0]) & (window < problem.domain[1])]
    peak = float(window[np.argmax(problem.value(window))])
    ax.annotate(f"plateau: the peak of L at θ={peak:.2f}\nstays within ±ρ of θ, so the\nobjective is flat "
                "and its\ngradient ≈ 0: no movement", xy=(start, float(problem.value(start))),
                xytext=(0.98, 0.97), textcoords="axes fraction", ha="right", va="top", fontsize=6.5,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.6", "alpha": 0.9},
                arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 0.8})


def run_fig1(
    out_dir: str | Path,
    *,
    problem: str | ToyProblem = "fig1",
    rho: float = 0.2,
    lr: float = 0.005,
    steps: int = 2000,
    start: float = 0.5,
    tilts: Sequence[float] = FIG1_TILTS,
    samples: Sequence[int] = FIG1_SAMPLES,
    seed: int = 0,
    repeats: int = 1,
    measure: str = "uniform",
    progress: bool = False,
) -> ToyReport:
    """Fig. 1: gradient descent on ERM, SAM (exact, and the ascent-step algorithm) and TSAM.

    Writes ``fig1.png`` (one panel per exact-gradient run: ``L``, the objective, the trajectory, the
    final point as a star and the objective's global minimiser on the domain), ``fig1_sampled.png``
    (the sampled TSAM runs, one panel per ``(s, t)``, exact path in grey), the trajectory table
    (final θ, ``L``, objective, neighbourhood mean and variance under ``mu`` with the same ``rho``,
    i.e. Def. 3 with ``t = 0``, and the range of θ over the last 10% of steps) and the table of
    global minimisers of every objective. With ``repeats > 1`` the sampled runs are repeated with
    seeds ``seed .. seed + repeats - 1`` and ``fig1_sampled_repeats.{md,csv}`` summarises where
    they end (median final θ; median, min and max neighbourhood variance per ``(s, t)``).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    began = time.perf_counter()
    problem = as_problem(problem)
    folder = Path(out_dir)
    report = ToyReport()
    tilts = [float(t) for t in tilts]
    exact_runs = [Run("erm"), Run("sam"), Run("sam-ascent")] + [Run("tsam", t) for t in tilts]
    sampled_runs = [Run("tsam", t, int(s)) for s in samples for t in tilts]
    trajectories = descend_many(
        problem, exact_runs + sampled_runs, start, lr, steps, rho, measure=measure, seed=seed, progress=progress
    )
    exact, sampled = trajectories[: len(exact_runs)], trajectories[len(exact_runs) :]

    objectives = [("erm", None), ("sam", None)] + [("tsam", t) for t in tilts]
    minimisers = {key: global_minimiser(problem, key[0], rho, key[1], measure) for key in objectives}
    grid = np.linspace(*problem.domain, _CURVE_POINTS)
    curves = {key: np.asarray(objective(problem, key[0], grid, rho, key[1], measure)) for key in objectives}

    def key_of(trajectory: Trajectory) -> tuple[str, float | None]:
        return ("sam" if trajectory.kind == "sam-ascent" else trajectory.kind, trajectory.tilt)

    # Fig. 1, exact gradients
    figure, panels = _panel_figure(len(exact))
    for ax, trajectory in zip(panels, exact):
        key = key_of(trajectory)
        _draw_path(ax, problem, trajectory, grid, None if key[0] == "erm" else curves[key], minimisers[key])
    title = f"{problem.description}\nexact gradients, ρ={rho:g}, lr={lr:g}, {steps} steps from θ={start:g}, μ {measure}"
    report.files.append(_finish_figure(figure, panels, title, folder / "fig1.png"))

    # sampled TSAM next to its exact path
    if sampled:
        by_tilt = {t.tilt: t for t in exact if t.kind == "tsam"}
        figure, panels = _panel_figure(len(sampled))
        for ax, trajectory in zip(panels, sampled):
            key = key_of(trajectory)
            _draw_path(ax, problem, trajectory, grid, curves[key], minimisers[key], reference=by_tilt[trajectory.tilt])
        title = f"sampled TSAM (s i.i.d. ε ~ μ per step, softmax(tL) weights), seed {seed}; grey: exact-gradient path"
        report.files.append(_finish_figure(figure, panels, title, folder / "fig1_sampled.png"))

    header = ["objective", "t", "s", "final θ", "L(θ)", "objective(θ)", "neighbourhood mean",
              "neighbourhood variance", "θ range, last 10%"]
    rows = [
        [_KIND_NAMES[tr.kind], _tilt_cell(tr.tilt), tr.num_samples, tr.final_theta, tr.final_loss, tr.final_objective, tr.neighbourhood_mean,
         tr.neighbourhood_variance, tr.converged_spread]
        for tr in trajectories
    ]
    _write_table(folder, "fig1_trajectories", header, rows, report,
                 f"Fig. 1 trajectories ({problem.name}, ρ={rho:g}, lr={lr:g}, {steps} steps from θ={start:g}, "
                 f"μ {measure}, seed {seed})")

    if repeats > 1 and sampled_runs:
        finals = {run: [] for run in sampled_runs}
        variances = {run: [] for run in sampled_runs}
        for extra_seed in range(seed, seed + repeats):
            batch = sampled if extra_seed == seed else descend_many(
                problem, sampled_runs, start, lr, steps, rho, measure=measure, seed=extra_seed, progress=progress
            )
            for run, trajectory in zip(sampled_runs, batch):
                finals[run].append(trajectory.final_theta)
                variances[run].append(trajectory.neighbourhood_variance)
        header = ["t", "s", "seeds", "median final θ", "median neighbourhood variance", "min variance", "max variance"]
        rows = [
            [_tilt_cell(run.tilt), run.num_samples, f"{seed}..{seed + repeats - 1}", float(np.median(finals[run])),
             float(np.median(variances[run])), float(np.min(variances[run])), float(np.max(variances[run]))]
            for run in sampled_runs
        ]
        _write_table(folder, "fig1_sampled_repeats", header, rows, report,
                     f"Sampled TSAM over {repeats} seeds ({problem.name}, ρ={rho:g}, lr={lr:g}, {steps} steps "
                     f"from θ={start:g}, μ {measure})")

    header = ["objective", "t", "argmin θ*", "objective(θ*)", "L(θ*)", "neighbourhood variance at θ*"]
    variances = np.atleast_1d(neighbourhood_stats(problem, [minimisers[k].theta for k in objectives], rho, 0.0, measure)[1])
    rows = [
        [key[0].upper(), _tilt_cell(key[1]), minimisers[key].theta, minimisers[key].value, minimisers[key].loss, variance]
        for key, variance in zip(objectives, variances)
    ]
    _write_table(folder, "fig1_minimisers", header, rows, report,
                 f"Global minimisers on θ ∈ {problem.domain} ({problem.name}, ρ={rho:g}, μ {measure})")
    report.seconds = time.perf_counter() - began
    return report


# ----------------------------------------------------------------------------- Fig. 5 and 6


def run_objective_sweep(
    out_dir: str | Path,
    name: str,
    kind: str,
    *,
    problem: str | ToyProblem = "fig5",
    rhos: Sequence[float] = SWEEP_RHOS,
    tilts: Sequence[float] = (),
    measure: str = "uniform",
) -> ToyReport:
    """Fig. 5 (``kind="sam"``) or Fig. 6 (``kind="tsam"``, one curve per tilt): the objective per ``rho``.

    One panel per ``rho``: ``L`` in blue, the objective(s) in red, each objective's global
    minimiser on the problem's domain marked in orange. Writes ``{name}.png`` and the table
    ``{name}_minimisers.{md,csv}`` (ERM's minimiser and each objective's, per ``rho``).
    """
    began = time.perf_counter()
    problem = as_problem(problem)
    folder = Path(out_dir)
    report = ToyReport()
    if kind not in ("sam", "tsam"):
        raise ValueError(f"kind must be 'sam' or 'tsam' for an objective sweep, got {kind!r}")
    tilts = [None] if kind == "sam" else [float(t) for t in tilts]
    if not tilts:
        raise ValueError("tilts must name at least one tilt for kind='tsam', got none")
    rhos = [float(r) for r in rhos]
    grid = np.linspace(*problem.domain, _CURVE_POINTS)
    figure, panels = _panel_figure(len(rhos))
    erm = global_minimiser(problem, "erm", 0.0)
    rows = []
    for ax, rho in zip(panels, rhos):
        ax.plot(grid, problem.value(grid), color=_COLOURS["loss"], lw=1.2, label="L(θ)")
        for index, tilt in enumerate(tilts):
            label = _objective_label(kind, tilt)
            shade = 1.0 - 0.5 * index / max(1, len(tilts) - 1) if len(tilts) > 1 else 1.0
            curve = objective(problem, kind, grid, rho, tilt, measure)
            ax.plot(grid, curve, color=(0.85 * shade, 0.1, 0.1), lw=1.2, label=label)
            best = global_minimiser(problem, kind, rho, tilt, measure)
            ax.plot(best.theta, best.value, "o", color=_COLOURS["path"], mec="black", ms=7,
                    label="global minimiser" if index == 0 else None)
            rows.append([f"{rho:g}", label, best.theta, best.value, best.loss, erm.theta])
        ax.set_title(f"ρ = {rho:g}: argmin " + ", ".join(f"{row[2]:.3f}" for row in rows[-len(tilts):]), fontsize=9)
        ax.set_xlabel("θ")
        ax.set_ylabel("L(θ), objective(θ)", fontsize=8)
    what = "SAM: max over |ε| ≤ ρ" if kind == "sam" else f"TSAM (Eq. 3), μ {measure} on [−ρ, ρ]"
    report.files.append(_finish_figure(figure, panels, f"{problem.description}\n{what}", folder / f"{name}.png"))
    header = ["ρ", "objective", "argmin θ*", "objective(θ*)", "L(θ*)", "ERM argmin"]
    _write_table(folder, f"{name}_minimisers", header, rows, report,
                 f"Global minimisers on θ ∈ {problem.domain} ({problem.name}, {what})")
    report.seconds = time.perf_counter() - began
    return report
