"""Tables and plots from a sweep (or one run directory), in the paper's formats (docs/harness.md).

Per optimizer label the setting with the best mean validation accuracy is chosen, as in the paper;
its test accuracy is shown after the **final** and at the **best-validation** epoch (they differ
under label noise). Comparisons are paired by seed against a reference (default SAM): 95% t
intervals (:func:`tiltedsam.harness.stats.paired_by_seed`). Files (:func:`write_report`): ``report.md``,
``accuracy.csv``, ``cost.csv``, ``accuracy_by_t.csv``, ``accuracy_by_s.csv``, ``runs.csv`` (percent,
``\n`` line endings), ``summary.json`` (fractions), ``convergence.png``, ``accuracy_vs_t.png``.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import _json
from .._atomic import atomic_write_with
from .._tables import csv_text, markdown_table
from ..optim.diagnostics import ess_message as _ess_message
from ..optim.registry import REGISTRY
from .config import atomic_write_text
from .stats import holm, minimal_detectable_effect, paired_by_seed
from .report_input import failed_runs_checked, load_checked, skipped_markdown
from .rundir import ACCURACY_UNIT, finite_mean, read_metrics, read_result
from .sweep import database_path, open_database

__all__ = ["Report", "build_report", "write_report", "run_report", "select_best", "mean_std",
           "markdown_table", "default_reference", "MEASURES"]

#: the accuracy measures of every comparison: result key -> name in tables
MEASURES = {"final_test_acc": "test acc % (final epoch)", "best_val_test_acc": "test acc % (best-val epoch)"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _pm(values: Sequence[float], scale: float = 100.0) -> str:
    """``"93.07 ± 3.19"`` over several values; ``"93.07 (n=1)"`` for one (a single seed has no spread)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean, std = mean_std(finite)
    if math.isnan(mean):
        return "n/a"
    if len(finite) == 1:
        return f"{scale * mean:.2f} (n=1)"
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def _number(value: float | None, digits: int = 4) -> float | str:
    """A CSV cell: the rounded number, or empty for a missing/non-finite value."""
    if value is None or not math.isfinite(value):
        return ""
    return round(float(value), digits)


def _finite_or_nan(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number if math.isfinite(number) else float("nan")


def _diff_text(diff: dict[str, Any]) -> str:
    """``"+1.40 [+0.20, +2.60]"`` in percentage points from a paired-difference dict (fractions)."""
    mean = f"{100 * diff['mean']:+.2f}"
    if diff["low"] is None or diff["high"] is None:
        return f"{mean} (n={diff['n']}, no interval)"
    return f"{mean} [{100 * diff['low']:+.2f}, {100 * diff['high']:+.2f}]"


def default_reference(labels: Sequence[str]) -> str:
    """The reference of the paired differences: SAM when it was run, else the first label."""
    if not labels:
        raise ValueError("no optimizer labels to choose a reference from")
    return "sam" if "sam" in labels else labels[0]


def _setting_text(setting: dict[str, Any]) -> str:
    if not setting:
        return "-"
    short = {"optimizer.settings.tilt": "t", "optimizer.settings.num_samples": "s", "optimizer.settings.rho": "rho",
             "optimizer.lr": "lr", "optimizer.settings.sampler": "sampler"}
    return ", ".join(f"{short.get(k, k)}={v}" for k, v in sorted(setting.items()))


def select_best(runs: list[dict[str, Any]], score: str = "best_val_acc") -> dict[str, list[dict[str, Any]]]:
    """Per label, the runs (one per seed) of the setting with the highest mean validation ``score``."""
    by_label: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_label[run["label"]][json.dumps(run["setting"], sort_keys=True)].append(run)
    chosen = {}
    for label, settings in by_label.items():
        chosen[label] = max(settings.values(), key=lambda rs: mean_std([r["result"][score] for r in rs])[0])
    return chosen


@dataclass
class Report:
    """Tables as (header, rows) pairs and the data behind the plots."""

    tables: dict[str, tuple[list[str], list[list[Any]]]]
    markdown: str
    curves: dict[str, dict[str, list[list[float]]]]  # label -> metric -> per-seed series
    by_t: dict[str, list[tuple[float, list[float]]]]  # label -> [(t, test accs of the selected setting)]
    summary: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # database rows that could not be read, one line each


def _by_axis(runs: list[dict[str, Any]], axis: str) -> dict[str, list[tuple[Any, list[dict[str, Any]]]]]:
    """For each label whose runs vary ``axis`` (or set it): value -> runs of the best setting at that value."""
    out: dict[str, list[tuple[Any, list[dict[str, Any]]]]] = {}
    for label in sorted({r["label"] for r in runs}):
        mine = [r for r in runs if r["label"] == label]
        values = {json.dumps(_axis_value(r, axis)) for r in mine}
        if any(v == "null" for v in values):
            continue
        rows = []
        # numbers in order, then names (tilt="auto") after them
        for value in sorted(values, key=lambda v: (isinstance(json.loads(v), str), json.loads(v))):
            subset = [r for r in mine if json.dumps(_axis_value(r, axis)) == value]
            rows.append((json.loads(value), select_best(subset)[label]))
        out[label] = rows
    return out


def _axis_value(run: dict[str, Any], axis: str) -> Any:
    if axis in run["setting"]:
        return run["setting"][axis]
    settings = run["config"]["optimizer"]["settings"]
    name = axis.rsplit(".", 1)[-1]
    if name in settings:
        return settings[name]
    if run["optimizer"] == "tsam":  # registry defaults apply
        return REGISTRY["tsam"].defaults.get(name)
    return None


@dataclass
class _SweepRuns:
    """What a report reads: finished runs, their epoch rows, the index's status counts, failures and meta."""

    runs: list[dict[str, Any]]
    epochs: dict[str, list[dict[str, Any]]]
    meta: dict[str, str]
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)  # index rows or run files that could not be read


def _load(db: str | Path, only_keys: set[str] | None) -> _SweepRuns:
    """The sweep's runs through :mod:`.report_input` (unreadable rows and files named in ``skipped``);
    ValueError when no run finished."""
    connection = open_database(db, read_only=True)
    try:
        runs, epochs, skipped = load_checked(connection, only_keys)
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        counts = dict(connection.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        failures = failed_runs_checked(connection, only_keys)
    finally:
        connection.close()
    if not runs:
        detail = ""
        if failures:
            detail = f"; {len(failures)} failed or interrupted, e.g. {failures[0]['label']} seed " \
                     f"{failures[0]['seed']}: {failures[0]['error']}"
        if skipped:
            detail += f"; {len(skipped)} unreadable row(s) skipped, e.g. {skipped[0]}"
        raise ValueError(f"the sweep database {str(database_path(db))!r} has no finished runs yet{detail}")
    return _SweepRuns(runs, epochs, meta, counts, failures, skipped)


def build_report(db: str | Path, title: str | None = None, only_keys: set[str] | None = None,
                 epilogue: Callable[[dict[str, Any]], str] | None = None, reference: str | None = None) -> Report:
    """Read a sweep (SweepError if its database is missing or of another version) and assemble every
    table. ``only_keys`` restricts the report to those run keys; ``epilogue(summary)`` returns Markdown
    appended to it; ``reference`` is the label of the paired differences (:func:`default_reference`).
    """
    loaded = _load(db, only_keys)
    runs = loaded.runs
    order = list(dict.fromkeys(r["label"] for r in runs))
    chosen = select_best(runs)
    reference = reference or default_reference(order)
    if reference not in chosen:
        raise ValueError(f"reference optimizer {reference!r} has no finished runs; choose one of {order}")
    ess_of = {r["run_key"]: finite_mean([e.get("effective_sample_size") for e in loaded.epochs[r["run_key"]]])
              for r in runs}
    tables, markdown_tables, summary = _accuracy_tables(order, chosen, reference, ess_of)
    by_t_plot = _axis_tables(runs, ess_of, tables, markdown_tables)
    curves = {label: _curves(chosen[label], loaded.epochs) for label in order}
    tables["runs"] = (["optimizer", "seed", "setting", "final_test_acc_percent", "best_val_test_acc_percent",
                       "best_val_epoch", "grad_evals", "train_seconds", "mean_ess", "threads", "run_dir"],
                      [[r["label"], r["seed"], _setting_text(r["setting"]), _number(100 * r["result"]["final_test_acc"]),
                        _number(100 * r["result"]["best_val_test_acc"]), r["result"]["best_val_epoch"],
                        r["result"]["grad_evals"], round(r["result"]["train_seconds"], 2),
                        # an optimizer without tilted weights has no ESS: an empty cell, as "–" in the report
                        _number(ess_of[r["run_key"]]) if _axis_value(r, "optimizer.settings.num_samples") else "",
                        r["result"].get("threads", ""), r["run_dir"]] for r in runs])
    markdown = _markdown(loaded, title, order, reference, markdown_tables, summary, bool(by_t_plot), epilogue)
    return Report(tables, markdown, curves, by_t_plot, summary, loaded.skipped)


def _accuracy_tables(order: list[str], chosen: dict[str, list[dict[str, Any]]], reference: str,
                     ess_of: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Test accuracy (Table 1), paired differences against ``reference`` and cost (Table 7), as
    CSV tables, Markdown tables and the summary (accuracies as fractions)."""
    acc_header = ["optimizer", "selected setting", "seeds", *MEASURES.values(), "val acc % (best epoch)",
                  "best-val epoch", "mean ESS / s"]
    acc_rows, cost_rows, cost_csv, csv_rows, paired_rows = [], [], [], [], []
    family: list[dict[str, Any]] = []  # the paired comparisons of the table, Holm-adjusted together
    cost_header = ["optimizer", "grad evals / step", "steps", "gradient evaluations", "epochs",
                   "train time (s)", "wall time incl. eval (s)", "s per 1k grad evals", "threads"]
    summary: dict[str, Any] = {}
    per_seed = {label: {m: {r["seed"]: r["result"][m] for r in chosen[label]} for m in (*MEASURES, "best_val_acc")}
                for label in order}
    for label in order:
        rs = chosen[label]
        res = [r["result"] for r in rs]
        samples = _axis_value(rs[0], "optimizer.settings.num_samples")
        ess = float(np.mean([ess_of[r["run_key"]] for r in rs])) if samples else float("nan")
        ess_text = f"{ess:.3f} / {samples}" if samples and math.isfinite(ess) else "–"
        acc_rows.append([label, _setting_text(rs[0]["setting"]), len(rs),
                         *(_pm([x[m] for x in res]) for m in MEASURES), _pm([x["best_val_acc"] for x in res]),
                         "/".join(str(x["best_val_epoch"]) for x in res), ess_text])
        markdown_row, csv_row = _cost_rows(label, res)
        cost_rows.append(markdown_row)
        cost_csv.append(csv_row)
        paired: dict[str, Any] = {}
        for measure in (*MEASURES, "best_val_acc"):
            values = [x[measure] for x in res]
            mean, std = mean_std(values)
            diff = None
            if label != reference:
                try:
                    diff = paired_by_seed(per_seed[label][measure], per_seed[reference][measure])
                except ValueError:  # no common seed or a non-finite value: no paired difference
                    diff = None
                paired[measure] = None if diff is None else {
                    "mean": diff.mean, "low": diff.low, "high": diff.high, "n": diff.n, "verdict": diff.verdict(),
                    "p": diff.p_value, "mde": _mde(diff)}
                if measure in MEASURES and paired[measure] is not None:
                    family.append(paired[measure])
            csv_rows.append([label, _setting_text(rs[0]["setting"]), measure, "percent", len(values),
                             _number(100 * mean), _number(100 * std) if len(values) > 1 else "", reference,
                             "" if diff is None else _number(100 * diff.mean),
                             "" if diff is None or diff.low is None else _number(100 * diff.low),
                             "" if diff is None or diff.high is None else _number(100 * diff.high),
                             "" if diff is None else diff.n])
        summary[label] = {
            "setting": rs[0]["setting"], "seeds": [r["seed"] for r in rs], "accuracy_unit": ACCURACY_UNIT,
            "final_test_acc": mean_std([x["final_test_acc"] for x in res]),
            "best_val_test_acc": mean_std([x["best_val_test_acc"] for x in res]),
            "train_seconds": mean_std([x["train_seconds"] for x in res])[0], "grad_evals": csv_row[3],
            "mean_ess": ess if math.isfinite(ess) else None, "num_samples": samples,
            "reference": reference, "paired": paired}
    _holm_verdicts(family)
    for label in order:
        if label == reference or label not in summary:
            continue
        cells = []
        for measure in MEASURES:
            d = summary[label]["paired"].get(measure)
            cells += ["n/a", "n/a"] if d is None else [_diff_text(d), _verdict_text(d)]
        paired_rows.append([f"{label} − {reference}", min(len(per_seed[label]["final_test_acc"]),
                                                          len(per_seed[reference]["final_test_acc"])), *cells])
    tables = {"accuracy": (["optimizer", "setting", "measure", "unit", "n", "mean", "std", "reference",
                            "diff_mean", "diff_low", "diff_high", "diff_n"], csv_rows),
              "cost": (["optimizer", "grad_evals_per_step", "steps", "grad_evals", "epochs", "n",
                        "train_seconds_mean", "train_seconds_std", "wall_seconds_mean", "seconds_per_1k_grad_evals",
                        "threads"], cost_csv)}
    markdown_tables = {"accuracy": (acc_header, acc_rows), "cost": (cost_header, cost_rows),
                       "paired": (["difference", "seeds", "Δ test acc (final epoch) [95% CI]", "verdict",
                                   "Δ test acc (best-val epoch) [95% CI]", "verdict"], paired_rows)}
    return tables, markdown_tables, summary


def _mde(diff: Any) -> float | None:
    """The smallest true gap this comparison detects (80% power, α = 0.05), or None below two seeds."""
    if diff.std is None or diff.n < 2 or not math.isfinite(diff.std):
        return None
    return minimal_detectable_effect(diff.std, diff.n)


def _holm_verdicts(family: list[dict[str, Any]]) -> None:
    """Holm-adjust the p-values of the report's paired comparisons (one family) and keep
    "better"/"worse" only where the adjusted p < 0.05; the rest read "not detected"."""
    tested = [d for d in family if d.get("p") is not None]  # n >= 2: better, worse or inside noise
    for d, adjusted in zip(tested, holm([d["p"] for d in tested])):
        d["holm_p"] = adjusted
        if d["verdict"] == "inside noise" or adjusted >= 0.05:
            d["verdict"] = "not detected"


def _verdict_text(d: dict[str, Any]) -> str:
    """E.g. "worse (Holm p 0.012)" or "not detected (Holm p 0.30; MDE 1.3)" in percentage points."""
    if d.get("holm_p") is None:
        return d["verdict"]
    detail = f"Holm p {d['holm_p']:.2g}"
    if d["verdict"] == "not detected" and d.get("mde") is not None:
        detail += f"; MDE {100 * d['mde']:.2g}"
    return f"{d['verdict']} ({detail})"


def _cost_rows(label: str, res: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Table 7's row for one optimizer's results: for report.md, and numeric for cost.csv."""
    train_s = mean_std([x["train_seconds"] for x in res])
    wall_s = mean_std([x["wall_seconds"] for x in res])
    evals = int(np.mean([x["grad_evals"] for x in res]))
    head = [label, res[0]["grad_evals_per_step"], int(np.mean([x["steps"] for x in res])), evals, res[0]["epochs"]]
    threads = "/".join(sorted({str(x.get("threads", "?")) for x in res}))
    return ([*head, _pm([x["train_seconds"] for x in res], scale=1.0), f"{wall_s[0]:.1f}",
             f"{1000 * train_s[0] / max(evals, 1):.2f}", threads],
            [*head, len(res), _number(train_s[0], 2), _number(train_s[1], 2) if len(res) > 1 else "",
             _number(wall_s[0], 2), _number(1000 * train_s[0] / max(evals, 1), 3), threads])


def _axis_tables(runs: list[dict[str, Any]], ess_of: dict[str, float], tables: dict[str, Any],
                 markdown_tables: dict[str, Any]) -> dict[str, list[tuple[float, list[float]]]]:
    """Accuracy per tilt t (Fig. 3) and per number of samples s (Table 2), added to ``tables`` and
    ``markdown_tables`` for labels run at several values; returns the numeric tilt curves to plot
    (tilt="auto" has no place on a t axis: table only)."""
    def accs(rs: list[dict[str, Any]], measure: str) -> list[float]:
        return [r["result"][measure] for r in rs]

    def ess(rs: list[dict[str, Any]]) -> float:
        return float(np.mean([ess_of[r["run_key"]] for r in rs]))

    def seconds(rs: list[dict[str, Any]]) -> float:
        return float(np.mean([r["result"]["train_seconds"] for r in rs]))

    # one value is a point, not a curve: the accuracy table already has it
    by_t = {label: rows for label, rows in _by_axis(runs, "optimizer.settings.tilt").items() if len(rows) >= 2}
    by_s = {label: rows for label, rows in _by_axis(runs, "optimizer.settings.num_samples").items() if len(rows) >= 2}
    for name, axis, points, extra, column, digits in (("accuracy_by_t", "t", by_t, ess, "mean_ess", 4),
                                                      ("accuracy_by_s", "s", by_s, seconds, "train_seconds", 2)):
        rows = []
        for label, values in points.items():
            for value, rs in values:
                for measure in MEASURES:
                    mean, std = mean_std(accs(rs, measure))
                    rows.append([label, value, measure, "percent", len(rs), _number(100 * mean),
                                 _number(100 * std) if len(rs) > 1 else "", _number(extra(rs), digits)])
        if rows:
            tables[name] = (["optimizer", axis, "measure", "unit", "n", "mean", "std", column], rows)
    if by_t:
        markdown_tables["accuracy_by_t"] = (
            ["optimizer", "t", "seeds", "test acc % (best-val epoch)", "mean ESS"],
            [[label, value, len(rs), _pm(accs(rs, "best_val_test_acc")),
              f"{ess(rs):.3f}" if math.isfinite(ess(rs)) else "–"] for label, values in by_t.items()
             for value, rs in values])
    if by_s:
        markdown_tables["accuracy_by_s"] = (
            ["optimizer", "s", "seeds", "test acc % (final)", "test acc % (best-val)", "train time (s)"],
            [[label, value, len(rs), _pm(accs(rs, "final_test_acc")), _pm(accs(rs, "best_val_test_acc")),
              f"{seconds(rs):.1f}"] for label, values in by_s.items() for value, rs in values])
    numeric = {label: [(float(v), accs(rs, "best_val_test_acc")) for v, rs in rows if not isinstance(v, str)]
               for label, rows in by_t.items()}
    return {label: points for label, points in numeric.items() if len(points) >= 2}


def _curves(runs: list[dict[str, Any]], epochs: dict[str, list[dict[str, Any]]]) -> dict[str, list[list[float]]]:
    """Per metric, one series per seed of the selected setting (Fig. 7)."""
    series: dict[str, list[list[float]]] = defaultdict(list)
    for r in runs:
        rows = epochs.get(r["run_key"], [])
        for metric in ("grad_evals", "epoch", "test_acc", "val_acc", "train_loss", "train_loss_at_theta",
                       "train_objective"):
            series[metric].append([_finite_or_nan(row.get(metric)) for row in rows])
    return dict(series)


def _markdown(loaded: _SweepRuns, title: str | None, order: list[str], reference: str,
              markdown_tables: dict[str, Any], summary: dict[str, Any], plot_by_t: bool,
              epilogue: Callable[[dict[str, Any]], str] | None) -> str:
    """report.md: the settings line, the tables, the figures, the failed runs and the epilogue."""
    first = loaded.runs[0]["config"]
    noise = first["data"]["label_noise"]
    val_kind = "clean" if first["data"]["clean_validation"] else (f"noisy ({noise:.0%} label noise, like training)"
                                                                  if noise else "clean (no label noise)")
    counts, meta = loaded.counts, loaded.meta
    data_line = (f"data `{first['data']['name']}`, label noise {noise:.0%}, model `{first['model']['name']}`, "
                 f"batch {first['batch_size']}, label smoothing {first['label_smoothing']}")
    paired = markdown_tables["paired"]
    parts = [f"# {title or 'Sweep report'}", "",
             f"{data_line}. Runs done: {counts.get('done', 0)}, failed: {counts.get('failed', 0)}, "
             f"interrupted: {counts.get('interrupted', 0)}, "
             f"pending/running: {counts.get('pending', 0) + counts.get('running', 0)}. "
             f"Written by tiltedsam {meta.get('package_version')} (schema {meta.get('schema_version')}).", "",
             f"Setting per optimizer chosen by mean validation accuracy (best epoch) over seeds; the validation "
             f"split is {val_kind}. Accuracies in %, mean ± std over seeds (n=1: one seed, no spread). "
             f"Mean ESS: the tilted weights' effective sample size averaged over steps, out of s samples "
             f"(ESS ≈ s means uniform weights: the tilt has no effect; see docs/tuning.md).", "",
             "## Test accuracy (Table 1 style)", "", markdown_table(*markdown_tables["accuracy"]), "",
             f"## Paired differences against {reference} (same seeds, percentage points, 95% t interval)", "",
             "Each seed shares data order, label noise, initialisation and noise stream across optimizers, so the "
             "per-seed differences cancel the spread both share. A gap is called better/worse only when its "
             "Holm-adjusted p (over every comparison in this table) is below 0.05; otherwise 'not detected', with "
             "the minimal detectable effect (MDE, percentage points, 80% power at this number of seeds): a gap "
             "smaller than that could be there unseen.", "",
             markdown_table(*paired) if paired[1] else f"(only {reference} was run: nothing to pair)", "",
             "## Cost (Table 7 style)", "", markdown_table(*markdown_tables["cost"]), ""]
    warnings_md = [f"- {label}: {message}" for label in order
                   if (message := _ess_message(summary[label]["mean_ess"], summary[label]["num_samples"]))]
    if warnings_md:
        parts += ["**Tilt diagnostics.**", "", *warnings_md, ""]
    if "accuracy_by_t" in markdown_tables:
        parts += ["## Accuracy per tilt t (Fig. 3 style)", "", markdown_table(*markdown_tables["accuracy_by_t"]), ""]
        if plot_by_t:  # only numeric tilts are plotted (tilt="auto" is in the table only)
            parts += ["![accuracy against t](accuracy_vs_t.png)", ""]
    if "accuracy_by_s" in markdown_tables:
        parts += ["## Accuracy per number of samples s (Table 2 style)", "",
                  markdown_table(*markdown_tables["accuracy_by_s"]), ""]
    parts += ["## Convergence (Fig. 7 style)", "", "![convergence](convergence.png)", ""]
    if loaded.failures:  # diverged or broken runs are named, not averaged away
        parts += ["## Failed runs", "", "These runs are not in the tables above (a diverged run fails: see its error).",
                  "", markdown_table(["optimizer", "seed", "setting", "status", "error"],
                                     [[f["label"], f["seed"], _setting_text(f["setting"]), f["status"],
                                       f["error"].replace("|", "\\|")] for f in loaded.failures]), ""]
    parts += skipped_markdown(loaded.skipped)
    if epilogue is not None:
        parts += [epilogue(summary)]
    return "\n".join(parts)


def _styles(labels: list[str]) -> dict[str, dict[str, Any]]:
    """A fixed colour, line style, marker and marker offset per label, so overlapping curves (ESAM1
    follows SAM's exactly until SAM's budget ends) stay distinguishable."""
    lines, markers = ["-", "--", "-.", ":"], ["o", "s", "^", "D", "v", "P"]
    return {label: {"color": f"C{i % 10}", "linestyle": lines[i % len(lines)], "marker": markers[i % len(markers)],
                    "markevery": (i % 3, 3), "linewidth": 2.2 - 0.3 * (i % 4)}
            for i, label in enumerate(labels)}


def _mean_band(ax, x: np.ndarray, values: np.ndarray, label: str, style: dict[str, Any]) -> None:
    """Mean over seeds as a line, ± one standard deviation as a band (none for one seed)."""
    mean = np.nanmean(values, axis=0)
    n = values.shape[0]
    if len(x) <= 8:  # few points: mark every one (staggered markers only help on long curves)
        style = {**style, "markevery": None}
    (line,) = ax.plot(x, mean, markersize=5, label=f"{label} (n={n})", **style)
    if n > 1:
        std = np.nanstd(values, axis=0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=line.get_color(), linewidth=0)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write_with(path, lambda temporary: fig.savefig(temporary, format="png", dpi=120))
    _pyplot().close(fig)


def _plot_convergence(report: Report, path: Path) -> None:
    plt = _pyplot()
    clean = any(np.isfinite(np.asarray(s, dtype=float)).any() for series in report.curves.values()
                for s in series.get("train_loss_at_theta", []) if len(s))
    loss_metric = "train_loss_at_theta" if clean else "train_loss"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    styles = _styles(list(report.curves))
    seeds = set()
    for label, series in report.curves.items():
        if not series.get("grad_evals"):
            continue
        n = min(len(s) for s in series["grad_evals"])
        if n == 0:
            continue
        seeds.add(len(series["grad_evals"]))
        x = np.mean([s[:n] for s in series["grad_evals"]], axis=0)
        for ax, metric, scale in zip(axes, ("test_acc", loss_metric, "train_objective"), (100.0, 1.0, 1.0)):
            values = np.array([s[:n] for s in series.get(metric, [])], dtype=float) * scale
            if values.size and np.isfinite(values).any():
                _mean_band(ax, x, values, label, styles[label])
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("test accuracy", fontsize=10)
    if clean:
        axes[1].set_ylabel("training loss at θ")
        axes[1].set_title("training loss at θ, same for every optimizer\n(fixed training subset, eval mode, "
                          "end of each epoch)", fontsize=9)
    else:
        axes[1].set_ylabel("training loss (first evaluation of each step)")
        axes[1].set_title("older runs: loss at each step's first point\n(TSAM's is at a perturbed point)", fontsize=9)
    axes[2].set_ylabel("objective each optimizer minimises")
    axes[2].set_title("each optimizer's own objective (epoch mean): ERM loss at θ,\nSAM loss at θ+ε, "
                      "TSAM tilted loss at its perturbed points", fontsize=9)
    for ax in axes:
        ax.set_xlabel("gradient evaluations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    band = "mean ± std over seeds" if max(seeds, default=1) > 1 else "one seed: no uncertainty band"
    fig.suptitle(f"Convergence, selected setting per optimizer ({band})")
    _save(fig, path)


def _plot_by_t(report: Report, path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(6.5, 4.5))
    styles = _styles(list(report.summary))
    all_ts: set[float] = set()
    for label, points in report.by_t.items():
        ts = [t for t, _ in points]
        all_ts.update(ts)
        means = [100 * mean_std(v)[0] for _, v in points]
        stds = [100 * mean_std(v)[1] for _, v in points]
        style = {k: v for k, v in styles[label].items() if k != "markevery"}
        ax.errorbar(ts, means, yerr=stds, capsize=3, label=f"{label} (n={len(points[0][1])}, ± std)", **style)
    for label, info in report.summary.items():
        if label in report.by_t:
            continue
        mean, std = info["best_val_test_acc"]
        color, linestyle = styles[label]["color"], styles[label]["linestyle"]
        ax.axhline(100 * mean, linestyle=linestyle, linewidth=1.2, color=color,
                   label=f"{label} (n={len(info['seeds'])}, band ± std)")
        if len(info["seeds"]) > 1:
            ax.axhspan(100 * (mean - std), 100 * (mean + std), color=color, alpha=0.12, linewidth=0)
    ts = sorted(all_ts)
    positive = [t for t in ts if t > 0]
    if ts[0] > 0:  # all tilts positive: a plain log axis with a margin on both sides
        ax.set_xscale("log")
        ax.set_xlim(ts[0] / 1.6, ts[-1] * 1.6)
        scale = "log scale"
    else:  # t = 0 included: linear up to the smallest positive tilt, logarithmic beyond
        ax.set_xscale("symlog", linthresh=positive[0] if positive else 1.0)
        ax.set_xlim(-0.3 * (positive[0] if positive else 1.0), (ts[-1] or 1.0) * 1.6)
        scale = "symmetric log scale"
    ax.set_xticks(ts)
    ax.set_xticklabels([f"{t:g}" for t in ts])
    ax.minorticks_off()
    ax.set_xlabel(f"tilt t ({scale})")
    ax.set_ylabel("test accuracy (%) at the best-val epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def write_report(db: str | Path, out_dir: str | Path | None = None, title: str | None = None,
                 only_keys: set[str] | None = None,
                 epilogue: Callable[[dict[str, Any]], str] | None = None, reference: str | None = None) -> Report:
    """Build the report from ``db`` (see :func:`build_report`) and write report.md, the CSVs and the
    PNGs to ``out_dir`` (default: the database's directory)."""
    report = build_report(db, title, only_keys, epilogue, reference)
    out = Path(out_dir) if out_dir is not None else database_path(db).parent
    out.mkdir(parents=True, exist_ok=True)
    for name, (header, rows) in report.tables.items():
        atomic_write_text(out / f"{name}.csv", csv_text(header, rows))
    _plot_convergence(report, out / "convergence.png")
    if report.by_t:  # only labels run at several tilts are in by_t
        _plot_by_t(report, out / "accuracy_vs_t.png")
    elif (out / "accuracy_vs_t.png").exists():  # a stale single-point plot from an older report
        (out / "accuracy_vs_t.png").unlink()
    atomic_write_text(out / "report.md", report.markdown)
    atomic_write_text(out / "summary.json", _json.dumps(report.summary, indent=2) + "\n")
    return report


def run_report(run_dir: str | Path) -> str:
    """Markdown summary of one run directory: its result and per-epoch metrics."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
    result = read_result(run_dir)
    header = ["epoch", "grad_evals", "train_loss", "train acc %", "val acc %", "test acc %", "train_seconds"]
    table = markdown_table(header, [[r["epoch"], r["grad_evals"], f"{r['train_loss']:.4f}",
                                     f"{100 * r['train_acc']:.2f}", f"{100 * r['val_acc']:.2f}",
                                     f"{100 * r['test_acc']:.2f}", r["train_seconds"]] for r in read_metrics(run_dir)])
    return (f"# Run {result['label']} (seed {result['seed']}, key {result['run_key']})\n\n"
            f"Final test accuracy {100 * result['final_test_acc']:.2f}%; best-val epoch {result['best_val_epoch']} "
            f"with test accuracy {100 * result['best_val_test_acc']:.2f}%; {result['grad_evals']} gradient "
            f"evaluations in {result['train_seconds']:.1f} s ({result['budget']}).\n\n{table}\n")
