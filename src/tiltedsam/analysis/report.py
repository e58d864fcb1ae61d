"""A flatness report over several solutions: Fig. 2 curves, top-k Hessian eigenvalues, Hessian trace and
the Table-3 cross-objective matrix, written as ``report.json``, ``report.md`` and ``fig2.png``.

:func:`write_flatness_report` takes ``label -> (model, loss_fn, train_data, test_data)`` (typically the
ERM, SAM and TSAM solutions of one task) and a :class:`ReportSettings`; every file is written atomically
(temporary file in the same folder, then ``os.replace``), so a reader never sees a half-written report.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

from .._atomic import atomic_write as _atomic_write
from .._tables import markdown_table
from .._version import __version__
from ._common import _batch_size, check_mode, check_positive_int, take_batches
from .cross_objective import CrossObjectiveTable, ObjectiveLosses, cross_objective, _check_noise, _check_sampler
from .hessian import TRACE_METHODS, hessian_eigenvalues, hessian_trace
from .neighborhood import _check_sigmas, _check_tilts, neighborhood_loss

__all__ = [
    "ANALYSES",
    "REPORT_FORMAT",
    "ReportSettings",
    "analyze_models",
    "render_markdown",
    "plot_neighborhood_curves",
    "write_flatness_report",
]

ANALYSES = ("neighborhood", "hessian", "trace", "cross_objective")
REPORT_FORMAT = "tiltedsam.flatness-report/1"
SPLITS = ("train", "test")


@dataclass
class ReportSettings:
    """Everything the report measures, with the paper's choices as defaults where it states them."""

    sigmas: tuple[float, ...] = (0.0, 0.005, 0.01, 0.02, 0.05)  # Fig. 2 noise scales
    num_draws: int = 20  # noise draws per sigma
    tilts: tuple[float, ...] = (1.0, 20.0)  # Def. 2 t-weighted statistics per sigma
    neighborhood_split: str = "train"
    k: int = 5  # top Hessian eigenvalues (the paper reports 5)
    smallest: int = 0  # also this many bottom (most negative) eigenvalues
    lanczos_max_iter: int = 100
    lanczos_tol: float = 1e-4
    trace_samples: int = 60  # Hessian-vector products for the trace
    trace_method: str = "hutch++"
    hessian_split: str = "train"
    sam_rho: float = 0.05
    sam_ascent_steps: int = 4
    tsam_tilt: float = 20.0  # t of the TSAM column (the paper's Sec. 5.2 uses t = 20)
    tsam_radius: float | None = None  # radius of the TSAM noise ball; None: sam_rho
    tsam_noise: str = "uniform"
    tsam_sampler: str = "ascent"  # Algorithm 2's points (see cross_objective); "ball" for Eq. 3's mu exactly
    cross_draws: int = 32  # Monte-Carlo draws of the TSAM loss (antithetic pairs)
    max_batches: int | None = None  # use only the first batches of each loader (materialised once)
    mode: str = "eval"
    seed: int = 0
    analyses: tuple[str, ...] = ANALYSES
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.sigmas = tuple(_check_sigmas(list(self.sigmas)))
        self.tilts = tuple(_check_tilts(list(self.tilts)))
        for name in ("num_draws", "k", "lanczos_max_iter", "trace_samples", "sam_ascent_steps", "cross_draws"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("smallest", self.smallest, minimum=0)
        if self.max_batches is not None:
            check_positive_int("max_batches", self.max_batches)
        check_mode(self.mode)
        _check_noise(self.tsam_noise)
        _check_sampler(self.tsam_sampler)
        if self.trace_method not in TRACE_METHODS:
            raise ValueError(f"trace_method must be one of {TRACE_METHODS}, got {self.trace_method!r}")
        for name in ("neighborhood_split", "hessian_split"):
            if getattr(self, name) not in SPLITS:
                raise ValueError(f"{name} must be one of {SPLITS}, got {getattr(self, name)!r}")
        unknown = [a for a in self.analyses if a not in ANALYSES]
        if unknown or not self.analyses:
            raise ValueError(f"analyses must be a non-empty subset of {ANALYSES}, got {self.analyses!r}")
        self.analyses = tuple(self.analyses)


def _jsonable(value: Any) -> Any:
    """Plain JSON: tuples to lists, non-finite floats to None (strict JSON has no NaN/inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _jsonable(value.item())
    return str(value)


def _environment() -> dict[str, Any]:
    return {
        "tiltedsam_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def analyze_models(
    models: Mapping[str, tuple[Any, Any, Any, Any]],
    settings: ReportSettings | None = None,
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the selected analyses on every model and return the report as a JSON-ready dict.

    ``models`` maps a label to ``(model, loss_fn, train_data, test_data)``; ``test_data`` may be None
    (then the test column of Table 3 is skipped). ``metadata`` (e.g. each run's config) is copied into
    the report. Every analysis of every model uses the same seed, so models of one architecture are
    compared under the same noise. Wall-clock seconds of each analysis are recorded per model.
    """
    settings = settings or ReportSettings()
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty mapping label -> (model, loss_fn, train, test), got {models!r}")
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "environment": _environment(),
        "settings": asdict(settings),
        "models": {},
    }
    common = {"seed": settings.seed, "mode": settings.mode, "progress": settings.progress}
    for label, entry in models.items():
        if not isinstance(entry, (tuple, list)) or len(entry) != 4:
            raise ValueError(f"models[{label!r}] must be (model, loss_fn, train_data, test_data), got {entry!r}")
        model, loss_fn, train, test = entry
        if train is None:
            raise ValueError(f"models[{label!r}] has no training data")
        # fix the batches once: every analysis (and every Lanczos product) then sees the same samples
        data = {"train": take_batches(train, settings.max_batches),
                "test": None if test is None else take_batches(test, settings.max_batches)}
        if settings.neighborhood_split == "test" or settings.hessian_split == "test":
            if data["test"] is None:
                raise ValueError(f"models[{label!r}] has no test data, but a split 'test' was asked for")
        entry_report: dict[str, Any] = {
            "num_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "num_samples": {split: sum(_batch_size(b[1]) for b in batches) for split, batches in data.items() if batches},
            "meta": dict((metadata or {}).get(label, {})),
            "timings_s": {},
            "cpu_timings_s": {},
        }
        timings = entry_report["timings_s"]
        cpu = entry_report["cpu_timings_s"]
        clock = time.process_time()

        def tick(name: str) -> None:
            # CPU seconds of this process: on a shared machine, wall time over CPU time shows contention
            nonlocal clock
            now = time.process_time()
            cpu[name] = cpu.get(name, 0.0) + now - clock
            clock = now

        if "neighborhood" in settings.analyses:
            result = neighborhood_loss(model, loss_fn, data[settings.neighborhood_split], list(settings.sigmas),
                                       settings.num_draws, list(settings.tilts), **common)
            entry_report["neighborhood"] = {"split": settings.neighborhood_split, **result.to_dict()}
            timings["neighborhood"] = result.seconds
            tick("neighborhood")
        if "hessian" in settings.analyses:
            eig = hessian_eigenvalues(model, loss_fn, data[settings.hessian_split], settings.k, smallest=settings.smallest,
                                      max_iter=settings.lanczos_max_iter, tol=settings.lanczos_tol, **common)
            entry_report["hessian"] = {"split": settings.hessian_split, **eig.to_dict()}
            timings["hessian"] = eig.seconds
            tick("hessian")
        if "trace" in settings.analyses:
            trace = hessian_trace(model, loss_fn, data[settings.hessian_split], num_samples=settings.trace_samples,
                                  method=settings.trace_method, **common)
            entry_report["trace"] = {"split": settings.hessian_split, **trace.to_dict()}
            timings["trace"] = trace.seconds
            tick("trace")
        if "cross_objective" in settings.analyses:
            entry_report["cross_objective"] = {}
            timings["cross_objective"] = 0.0
            for split in SPLITS:
                if data[split] is None:
                    continue
                losses = cross_objective(
                    model, loss_fn, data[split], rho=settings.sam_rho, ascent_steps=settings.sam_ascent_steps,
                    tilt=settings.tsam_tilt, radius=settings.tsam_radius, noise=settings.tsam_noise,
                    sampler=settings.tsam_sampler,
                    num_draws=settings.cross_draws, **common,
                )
                entry_report["cross_objective"][split] = losses.to_dict()
                timings["cross_objective"] += losses.seconds
            tick("cross_objective")
        timings["total"] = sum(timings.values())
        cpu["total"] = sum(cpu.values())
        report["models"][label] = entry_report
    return report


# ------------------------------------------------------------------------------------------ rendering
def _pm(value: Any, error: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if error is None or (isinstance(error, float) and not math.isfinite(error)):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}g} ± {error:.2g}"


def _cross_table(report: Mapping[str, Any]) -> CrossObjectiveTable | None:
    rows = {}
    for label, entry in report["models"].items():
        if "cross_objective" in entry:
            rows[label] = {split: ObjectiveLosses(**{f.name: entry["cross_objective"][split][f.name]
                                                      for f in fields(ObjectiveLosses)})
                           for split in entry["cross_objective"]}
    return CrossObjectiveTable(rows) if rows else None


def render_markdown(report: Mapping[str, Any], figure: str | None = "fig2.png") -> str:
    """The report as Markdown: settings, Fig. 2 table (and figure link), eigenvalues, trace, Table 3, timings."""
    settings = report["settings"]
    models = report["models"]
    env = report["environment"]
    out = [
        "# Flatness report",
        "",
        f"{len(models)} model(s), created {report['created']} with tiltedsam {env['tiltedsam_version']}, "
        f"torch {env['torch_version']} ({env['torch_threads']} thread(s), {env['processor']}"
        + (f", {env['cuda']}" if env.get("cuda") else "") + f"). BatchNorm/dropout mode: **{settings['mode']}**; "
        f"seed {settings['seed']}" + (f"; first {settings['max_batches']} batch(es) of each loader" if settings["max_batches"] else "")
        + ".",
        "",
    ]
    with_neighborhood = {k: v["neighborhood"] for k, v in models.items() if "neighborhood" in v}
    if with_neighborhood:
        tilts = settings["tilts"]
        out += [
            f"## Neighbourhood loss (Fig. 2): L(θ*+ε), ε ~ N(0, σ²I), {settings['num_draws']} draws per σ, "
            f"{settings['neighborhood_split']} data",
            "",
        ]
        if figure:
            out += [f"![mean and variance of the neighbourhood loss against sigma]({figure})", ""]
        header = ["model", "σ", "mean", "variance", *(f"t={t:g}: {name}" for t in tilts
                                                       for name in ("weighted var", "L^t"))]
        rows = []
        for label, result in with_neighborhood.items():
            for stats in result["statistics"]:
                cells = [label, f"{stats['sigma']:g}", _pm(stats["mean"], stats["mean_se"]),
                         _pm(stats["variance"], stats["variance_se"])]
                for tilted in stats["tilted"]:
                    cells += [_pm(tilted["variance"], tilted["variance_se"]), _pm(tilted["objective"], tilted["objective_se"])]
                rows.append(cells)
        out += [markdown_table(header, rows, align=["left"] + ["right"] * (len(header) - 1)), "", "Values are estimate ± standard error (bootstrap for the tilted columns).", ""]
    with_hessian = {k: v["hessian"] for k, v in models.items() if "hessian" in v}
    if with_hessian:
        k = settings["k"]
        header = ["model", *(f"λ{i + 1}" for i in range(k)), "max relative residual", "iterations", "converged"]
        rows = []
        for label, eig in with_hessian.items():
            worst = max(eig["relative_residuals"]) if eig["relative_residuals"] else float("nan")
            rows.append([label, *(f"{v:.4g}" for v in eig["eigenvalues"]), f"{worst:.1e}", eig["iterations"],
                         eig["converged"]])
        out += [f"## Top-{k} Hessian eigenvalues (Lanczos, {settings['hessian_split']} data)", "",
                markdown_table(header, rows, align=["left"] + ["right"] * (k + 3))]
        if settings["smallest"]:
            out += ["", markdown_table(["model", "smallest eigenvalues (ascending)", "residuals"], [
                [label, ", ".join(f"{v:.4g}" for v in eig["smallest_eigenvalues"]),
                 ", ".join(f"{r:.1e}" for r in eig["smallest_residuals"])] for label, eig in with_hessian.items()])]
        out += ["", "Residual = ‖Hx − λx‖ / max|λ|; each returned λ is within ‖Hx − λx‖ of a true eigenvalue.", ""]
    with_trace = {k: v["trace"] for k, v in models.items() if "trace" in v}
    if with_trace:
        out += [f"## Hessian trace ({settings['trace_method']}, {settings['trace_samples']} products)", "",
                markdown_table(["model", "trace"], [[label, _pm(t["estimate"], t["standard_error"])]
                                                    for label, t in with_trace.items()], align=["left", "right"]), ""]
    table = _cross_table(report)
    if table is not None:
        radius = settings["tsam_radius"] if settings["tsam_radius"] is not None else settings["sam_rho"]
        out += ["## Cross-objective losses (Table 3)", "",
                f"ERM: L(θ). SAM: max of L(θ + s·g/‖g‖) over s ∈ {{0, ρ/{settings['sam_ascent_steps']}, …, ρ}}, "
                f"ρ = {settings['sam_rho']:g}, g the full-data gradient. TSAM: L^t with t = {settings['tsam_tilt']:g} over "
                f"{settings['cross_draws']} draws (± bootstrap standard error), " + (
                    f"ε {settings['tsam_noise']} in the ball of radius {radius:g} (antithetic pairs)."
                    if settings["tsam_sampler"] == "ball" else
                    f"ε = δ + ρ∇L(θ+δ)/‖∇L(θ+δ)‖ (Algorithm 2), δ {settings['tsam_noise']} of norm ≤ {radius:g}."),
                "", table.to_markdown()]
    timed = [*settings["analyses"], "total"]
    rows = []
    for label, entry in models.items():
        wall, cpu = entry["timings_s"], entry.get("cpu_timings_s", {})
        rows.append([label, *(f"{wall.get(a, float('nan')):.1f} / {cpu.get(a, float('nan')):.1f}" for a in timed)])
    out += ["## Time per analysis (seconds: wall clock / CPU time of this process)", "",
            markdown_table(["model", *timed], rows, align=["left"] + ["right"] * len(timed)), "", "CPU time above wall time means several threads; wall time well above CPU time means the machine "
            "was busy with other work.", ""]
    return "\n".join(out)


def plot_neighborhood_curves(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """Fig. 2: mean and variance of the neighbourhood loss against sigma, one line per model, with
    standard-error bars; written atomically as PNG. Returns None if no model has neighbourhood results."""
    curves = {label: entry["neighborhood"]["statistics"] for label, entry in report["models"].items()
              if "neighborhood" in entry}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    markers, lines = ["o", "s", "^", "D", "v"], ["-", "--", "-.", ":"]
    sigmas: set[float] = set()
    variances: list[float] = []
    for index, (label, stats) in enumerate(curves.items()):
        sigma = [s["sigma"] for s in stats]
        sigmas.update(sigma)
        variances += [s["variance"] for s in stats if s["variance"] is not None and s["variance"] > 0]
        for axis, key in zip(axes, ("mean", "variance")):
            errors = [s[f"{key}_se"] if s[f"{key}_se"] is not None and math.isfinite(s[f"{key}_se"]) else 0.0
                      for s in stats]
            axis.errorbar(sigma, [s[key] for s in stats], yerr=errors, marker=markers[index % len(markers)],
                          linestyle=lines[index % len(lines)], capsize=3, label=label)
    axes[0].set_ylabel("E[L(θ*+ε)] (mean ± s.e. over draws)")
    axes[1].set_ylabel("var[L(θ*+ε)] (symmetric log scale)")
    # σ spans orders of magnitude (and includes 0): a symmetric log axis keeps the small-σ region visible
    positive = sorted(v for v in sigmas if v > 0)
    for axis in axes:
        if positive:
            axis.set_xscale("symlog", linthresh=positive[0])
            axis.set_xticks(sorted(sigmas))
            axis.set_xticklabels([f"{v:g}" for v in sorted(sigmas)], fontsize=8)
        axis.set_xlabel("σ (ε ~ N(0, σ²I)), symmetric log scale")
        axis.grid(alpha=0.3)
        axis.legend()
    if variances:
        axes[1].set_yscale("symlog", linthresh=min(variances))
    axes[1].set_ylim(bottom=0)  # a variance is never negative (error bars may reach below 0)
    figure.suptitle("Neighbourhood loss around each solution (cf. TSAM paper, Fig. 2)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return _atomic_write(Path(path), buffer.getvalue())


def write_flatness_report(
    models: Mapping[str, tuple[Any, Any, Any, Any]],
    out_dir: str | os.PathLike[str],
    settings: ReportSettings | None = None,
    *,
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Analyse ``models`` (label -> (model, loss_fn, train_data, test_data)) and write ``report.json``,
    ``report.md`` and ``fig2.png`` into ``out_dir`` (created if needed; each file atomically).
    Returns the report dict, with the written paths under ``"files"``."""
    start = time.perf_counter()
    report = analyze_models(models, settings, metadata=metadata)
    out = Path(out_dir)
    figure = plot_neighborhood_curves(report, out / "fig2.png")
    report["files"] = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    if figure is not None:
        report["files"]["figure"] = str(figure)
    report["total_seconds"] = time.perf_counter() - start
    _atomic_write(out / "report.md", render_markdown(report, "fig2.png" if figure is not None else None))
    _atomic_write(out / "report.json", json.dumps(_jsonable(report), indent=2) + "\n")
    return report
