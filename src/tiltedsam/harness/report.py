"""Tables and plots from a sweep database (or one run directory), in the paper's formats.

Selection follows the paper: for each optimizer label, the hyper-parameter setting (all sweep axes
except the seed) with the highest validation accuracy, averaged over seeds, is chosen; its *test*
accuracy is reported as mean ± std over seeds. Validation accuracy here is the best over epochs
(the epoch a practitioner would keep), and both test numbers are shown for the chosen setting:

* ``final``: test accuracy after the last epoch of the budget;
* ``best-val``: test accuracy at the epoch with the best validation accuracy.

Under label noise the two differ (longer training memorises the noisy labels), so an equal-compute
baseline (ESAM1) is only fair with the ``best-val`` column next to the ``final`` one.

Outputs (:func:`write_report`): ``report.md``; ``accuracy.csv`` (Table 1/6 style),
``cost.csv`` (Table 7 style: time and gradient evaluations), ``accuracy_by_t.csv`` (Fig. 3
style), ``accuracy_by_s.csv`` (Table 2 style), ``runs.csv`` (every run); ``convergence.png``
(Fig. 7 style: test accuracy and training loss against gradient evaluations) and
``accuracy_vs_t.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import _json
from .._atomic import atomic_write_with
from .config import atomic_write_text
from .sweep import database_path, failed_runs, iter_results, open_database

__all__ = ["Report", "build_report", "write_report", "run_report", "select_best", "mean_std",
           "markdown_table"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _pm(values: Sequence[float], scale: float = 100.0) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "n/a"
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


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


def _load(connection) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    runs = list(iter_results(connection))
    epochs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in connection.execute("SELECT run_key, metrics FROM epochs ORDER BY run_key, epoch"):
        row = json.loads(r["metrics"])  # non-finite numbers are stored as null
        epochs[r["run_key"]].append({k: float("nan") if v is None else v for k, v in row.items()})
    return runs, epochs


def _by_axis(runs: list[dict[str, Any]], axis: str) -> dict[str, list[tuple[Any, list[dict[str, Any]]]]]:
    """For each label whose runs vary ``axis`` (or set it): value -> runs of the best setting at that value."""
    out: dict[str, list[tuple[Any, list[dict[str, Any]]]]] = {}
    labels = sorted({r["label"] for r in runs})
    for label in labels:
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
        from ..optim.registry import REGISTRY

        return REGISTRY["tsam"].defaults.get(name)
    return None


def build_report(db: str | Path, title: str | None = None, only_keys: set[str] | None = None,
                 epilogue: Callable[[dict[str, Any]], str] | None = None) -> Report:
    """Read a sweep database and assemble every table (raises SweepError if missing/other version).

    ``only_keys`` restricts the report to those run keys (the current grid of a sweep whose database
    also holds older runs); ``epilogue(summary)`` returns Markdown appended to the report.
    """
    connection = open_database(db)
    try:
        runs, epochs = _load(connection)
        if only_keys is not None:
            runs = [r for r in runs if r["run_key"] in only_keys]
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        counts = dict(connection.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        failures = failed_runs(connection, only_keys)
    finally:
        connection.close()
    if not runs:
        detail = ""
        if failures:
            detail = f"; {len(failures)} failed or interrupted, e.g. {failures[0]['label']} seed " \
                     f"{failures[0]['seed']}: {failures[0]['error']}"
        raise ValueError(f"the sweep database {str(database_path(db))!r} has no finished runs yet{detail}")
    order = list(dict.fromkeys(r["label"] for r in runs))
    chosen = select_best(runs)
    first = runs[0]["config"]
    noise = first["data"]["label_noise"]
    val_kind = "clean" if first["data"]["clean_validation"] else (f"noisy ({noise:.0%} label noise, like training)"
                                                                  if noise else "clean (no label noise)")

    acc_header = ["optimizer", "selected setting", "seeds", "test acc % (final epoch)",
                  "test acc % (best-val epoch)", "val acc % (best epoch)", "best-val epoch"]
    acc_rows, cost_rows = [], []
    cost_header = ["optimizer", "grad evals / step", "steps", "gradient evaluations", "epochs",
                   "train time (s)", "wall time incl. eval (s)", "s per 1k grad evals"]
    summary: dict[str, Any] = {}
    for label in order:
        rs = chosen[label]
        res = [r["result"] for r in rs]
        acc_rows.append([label, _setting_text(rs[0]["setting"]), len(rs),
                         _pm([x["final_test_acc"] for x in res]), _pm([x["best_val_test_acc"] for x in res]),
                         _pm([x["best_val_acc"] for x in res]),
                         "/".join(str(x["best_val_epoch"]) for x in res)])
        train_s = mean_std([x["train_seconds"] for x in res])
        wall_s = mean_std([x["wall_seconds"] for x in res])
        evals = int(np.mean([x["grad_evals"] for x in res]))
        cost_rows.append([label, res[0]["grad_evals_per_step"], int(np.mean([x["steps"] for x in res])), evals,
                          res[0]["epochs"], f"{train_s[0]:.1f} ± {train_s[1]:.1f}", f"{wall_s[0]:.1f}",
                          f"{1000 * train_s[0] / max(evals, 1):.2f}"])
        summary[label] = {
            "setting": rs[0]["setting"], "seeds": [r["seed"] for r in rs],
            "final_test_acc": mean_std([x["final_test_acc"] for x in res]),
            "best_val_test_acc": mean_std([x["best_val_test_acc"] for x in res]),
            "train_seconds": train_s[0], "grad_evals": evals}

    tables = {"accuracy": (acc_header, acc_rows), "cost": (cost_header, cost_rows)}
    by_t_rows, by_t_plot = [], {}
    for label, rows in _by_axis(runs, "optimizer.settings.tilt").items():
        numeric = [(float(v), [r["result"]["best_val_test_acc"] for r in rs]) for v, rs in rows
                   if not isinstance(v, str)]  # tilt="auto" has no place on a t axis: table only
        if numeric:
            by_t_plot[label] = numeric
        for value, rs in rows:
            by_t_rows.append([label, value, len(rs), _pm([r["result"]["final_test_acc"] for r in rs]),
                              _pm([r["result"]["best_val_test_acc"] for r in rs])])
    if by_t_rows:
        tables["accuracy_by_t"] = (["optimizer", "t", "seeds", "test acc % (final)", "test acc % (best-val)"],
                                   by_t_rows)
    by_s_rows = []
    for label, rows in _by_axis(runs, "optimizer.settings.num_samples").items():
        if len(rows) < 2:
            continue
        for value, rs in rows:
            by_s_rows.append([label, value, len(rs), _pm([r["result"]["final_test_acc"] for r in rs]),
                              _pm([r["result"]["best_val_test_acc"] for r in rs]),
                              f"{np.mean([r['result']['train_seconds'] for r in rs]):.1f}"])
    if by_s_rows:
        tables["accuracy_by_s"] = (["optimizer", "s", "seeds", "test acc % (final)", "test acc % (best-val)",
                                    "train time (s)"], by_s_rows)

    curves: dict[str, dict[str, list[list[float]]]] = {}
    for label in order:
        series: dict[str, list[list[float]]] = defaultdict(list)
        for r in chosen[label]:
            rows = epochs.get(r["run_key"], [])
            for metric in ("grad_evals", "epoch", "test_acc", "val_acc", "train_loss"):
                series[metric].append([row[metric] for row in rows])
        curves[label] = dict(series)

    data_line = (f"data `{first['data']['name']}`, label noise {noise:.0%}, model `{first['model']['name']}`, "
                 f"batch {first['batch_size']}, label smoothing {first['label_smoothing']}")
    parts = [f"# {title or 'Sweep report'}", "",
             f"{data_line}. Runs done: {counts.get('done', 0)}, failed: {counts.get('failed', 0)}, "
             f"interrupted: {counts.get('interrupted', 0)}, "
             f"pending/running: {counts.get('pending', 0) + counts.get('running', 0)}. "
             f"Written by tiltedsam {meta.get('package_version')} (schema {meta.get('schema_version')}).", "",
             f"Setting per optimizer chosen by mean validation accuracy (best epoch) over seeds; the validation "
             f"split is {val_kind}. Accuracies in %, mean ± std over seeds.", "",
             "## Test accuracy (Table 1 style)", "", markdown_table(acc_header, acc_rows), "",
             "## Cost (Table 7 style)", "", markdown_table(cost_header, cost_rows), ""]
    if "accuracy_by_t" in tables:
        parts += ["## Accuracy per tilt t (Fig. 3 style)", "", markdown_table(*tables["accuracy_by_t"]), ""]
        if by_t_plot:  # only numeric tilts are plotted (tilt="auto" is in the table only)
            parts += ["![accuracy against t](accuracy_vs_t.png)", ""]
    if "accuracy_by_s" in tables:
        parts += ["## Accuracy per number of samples s (Table 2 style)", "", markdown_table(*tables["accuracy_by_s"]),
                  ""]
    parts += ["## Convergence (Fig. 7 style)", "", "![convergence](convergence.png)", ""]
    if failures:  # diverged or broken runs are named, not averaged away
        parts += ["## Failed runs", "", "These runs are not in the tables above (a diverged run fails: see its error).",
                  "", markdown_table(["optimizer", "seed", "setting", "status", "error"],
                                     [[f["label"], f["seed"], _setting_text(f["setting"]), f["status"],
                                       f["error"].replace("|", "\\|")] for f in failures]), ""]
    if epilogue is not None:
        parts += [epilogue(summary)]
    run_rows = [[r["label"], r["seed"], _setting_text(r["setting"]), r["result"]["final_test_acc"],
                 r["result"]["best_val_test_acc"], r["result"]["best_val_epoch"], r["result"]["grad_evals"],
                 round(r["result"]["train_seconds"], 2), r["run_dir"]] for r in runs]
    tables["runs"] = (["optimizer", "seed", "setting", "final_test_acc", "best_val_test_acc", "best_val_epoch",
                       "grad_evals", "train_seconds", "run_dir"], run_rows)
    return Report(tables, "\n".join(parts), curves, by_t_plot, summary)


def _styles(labels: list[str]) -> dict[str, dict[str, str]]:
    """A fixed colour, line style and marker per label, so overlapping curves stay distinguishable
    (ESAM1 follows SAM's trajectory exactly until SAM's budget ends)."""
    lines, markers = ["-", "--", "-.", ":"], ["o", "s", "^", "D", "v", "P"]
    return {label: {"color": f"C{i % 10}", "linestyle": lines[i % len(lines)], "marker": markers[i % len(markers)]}
            for i, label in enumerate(labels)}


def _plot_convergence(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    styles = _styles(list(report.curves))
    for label, series in report.curves.items():
        if not series.get("grad_evals"):
            continue
        n = min(len(s) for s in series["grad_evals"])
        if n == 0:
            continue
        x = np.mean([s[:n] for s in series["grad_evals"]], axis=0)
        for ax, metric in zip(axes, ("test_acc", "train_loss")):
            values = np.array([s[:n] for s in series[metric]], dtype=float)
            mean = values.mean(axis=0)
            (line,) = ax.plot(x, mean, markersize=4, label=label, **styles[label])
            if len(values) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("training loss (first evaluation of each step)")
    for ax in axes:
        ax.set_xlabel("gradient evaluations")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Convergence, selected setting per optimizer (mean ± std over seeds)")
    fig.tight_layout()
    atomic_write_with(path, lambda temporary: fig.savefig(temporary, format="png", dpi=120))
    plt.close(fig)


def _plot_by_t(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    styles = _styles(list(report.summary))
    all_ts: set[float] = set()
    for label, points in report.by_t.items():
        ts = [t for t, _ in points]
        all_ts.update(ts)
        means = [mean_std(v)[0] for _, v in points]
        stds = [mean_std(v)[1] for _, v in points]
        ax.errorbar(ts, means, yerr=stds, capsize=3, label=label, **styles[label])
    for label, info in report.summary.items():
        if label not in report.by_t:
            ax.axhline(info["best_val_test_acc"][0], linestyle=styles[label]["linestyle"], linewidth=1,
                       color=styles[label]["color"], label=label)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(sorted(all_ts))
    ax.set_xticklabels([f"{t:g}" for t in sorted(all_ts)])
    ax.set_xlabel("tilt t")
    ax.set_ylabel("test accuracy (best-val epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_with(path, lambda temporary: fig.savefig(temporary, format="png", dpi=120))
    plt.close(fig)


def write_report(db: str | Path, out_dir: str | Path | None = None, title: str | None = None,
                 only_keys: set[str] | None = None,
                 epilogue: Callable[[dict[str, Any]], str] | None = None) -> Report:
    """Build the report from ``db`` (see :func:`build_report`) and write report.md, the CSVs and the
    PNGs to ``out_dir`` (default: the database's directory)."""
    report = build_report(db, title, only_keys, epilogue)
    out = Path(out_dir) if out_dir is not None else database_path(db).parent
    out.mkdir(parents=True, exist_ok=True)
    for name, (header, rows) in report.tables.items():
        atomic_write_text(out / f"{name}.csv", _csv_text(header, rows))
    _plot_convergence(report, out / "convergence.png")
    if report.by_t:
        _plot_by_t(report, out / "accuracy_vs_t.png")
    atomic_write_text(out / "report.md", report.markdown)
    atomic_write_text(out / "summary.json", _json.dumps(report.summary, indent=2) + "\n")
    return report


def run_report(run_dir: str | Path) -> str:
    """Markdown summary of one run directory: its result and per-epoch metrics."""
    from .train import read_result

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
    result = read_result(run_dir)
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    header = ["epoch", "grad_evals", "train_loss", "train_acc", "val_acc", "test_acc", "train_seconds"]
    table = markdown_table(header, [[r["epoch"], r["grad_evals"], f"{float(r['train_loss']):.4f}",
                                     f"{float(r['train_acc']):.4f}", f"{float(r['val_acc']):.4f}",
                                     f"{float(r['test_acc']):.4f}", r["train_seconds"]] for r in rows])
    return (f"# Run {result['label']} (seed {result['seed']}, key {result['run_key']})\n\n"
            f"Final test accuracy {result['final_test_acc']:.4f}; best-val epoch {result['best_val_epoch']} with "
            f"test accuracy {result['best_val_test_acc']:.4f}; {result['grad_evals']} gradient evaluations in "
            f"{result['train_seconds']:.1f} s ({result['budget']}).\n\n{table}\n")
