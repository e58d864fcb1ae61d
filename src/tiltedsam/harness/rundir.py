"""The files of one run directory, the single home of a run's epochs and result: config.toml and
config.json (:func:`.config.save_config`), run.json (seed, key, versions, budget, data; at start),
metrics.csv (one row per epoch, :data:`METRIC_COLUMNS`, accuracies as fractions), checkpoint.pt
(:mod:`.checkpoints`) and result.json (:data:`RESULT_FORMAT`, at the end). Epochs are read through
:func:`read_metrics`, results through :func:`read_result`; a sweep database only indexes run directories.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import _json
from .._tables import csv_text
from .config import atomic_write_text

__all__ = ["METRIC_COLUMNS", "RESULT_FORMAT", "ACCURACY_UNIT", "write_metrics", "read_metrics", "write_result",
           "read_result", "summarize", "finite_mean"]

RESULT_FORMAT = "tiltedsam.result/1"
#: accuracies in metrics.csv, result.json and summary.json are fractions; reports show percent
ACCURACY_UNIT = "fraction"

#: columns of metrics.csv, in order
METRIC_COLUMNS = [
    "epoch", "step", "grad_evals", "train_seconds", "wall_seconds", "lr",
    "train_loss", "train_acc", "train_objective", "train_loss_at_theta", "val_loss", "val_acc", "test_loss",
    "test_acc", "tilt", "effective_sample_size",
]
_INTEGER_COLUMNS = {"epoch", "step"}


def write_metrics(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    """``metrics.csv`` from ``rows`` (atomically; floats round-trip), a task's own metrics (GLUE:
    ``val_mcc``, ...) after the fixed columns."""
    columns = METRIC_COLUMNS + sorted({k for r in rows for k in r if k not in METRIC_COLUMNS and _is_task_column(k)})
    table = [[row.get(column, "") for column in columns] for row in rows]
    atomic_write_text(Path(run_dir) / "metrics.csv", csv_text(columns, table))


def _is_task_column(column: str) -> bool:
    return column.startswith(("val_", "test_"))


def _cell(column: str, text: str) -> Any:
    if text == "":
        return float("nan")
    if column in _INTEGER_COLUMNS or (column == "grad_evals" and text.lstrip("-").isdigit()):
        return int(text)
    return float(text)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch rows of ``metrics.csv`` as numbers (a missing or empty cell is NaN); [] when absent."""
    import csv

    file = Path(run_dir) / "metrics.csv"
    if not file.is_file():
        return []
    with open(file, newline="") as handle:
        return [{column: _cell(column, text) for column, text in row.items()
                 if column in METRIC_COLUMNS or _is_task_column(column)}
                for row in csv.DictReader(handle)]


def finite_mean(values: list[Any]) -> float:
    """Mean of the finite values (None and NaN skipped); NaN when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final-epoch and best-validation-epoch numbers of a list of metric rows."""
    final = rows[-1]
    score = "val_metric" if "val_metric" in final else "val_acc"  # a task's official metric when it has one
    best = max(rows, key=lambda r: (r[score] if math.isfinite(r[score]) else -2.0, -r["epoch"]))
    return {
        "final_epoch": final["epoch"], "final_val_acc": final["val_acc"], "final_test_acc": final["test_acc"],
        "final_test_loss": final["test_loss"], "final_train_loss": final["train_loss"],
        "best_val_epoch": best["epoch"], "best_val_acc": best["val_acc"], "best_val_test_acc": best["test_acc"],
    }


def write_result(run_dir: str | Path, result: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / "result.json", _json.dumps(result, indent=2) + "\n")


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """The ``result.json`` of a finished run, checked for format."""
    file = Path(run_dir) / "result.json"
    if not file.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a finished tiltedsam run directory (no result.json)")
    try:
        result = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{str(file)!r} is not a readable result file: {exc.__class__.__name__}") from None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        found = result.get("format") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"{str(file)!r} has format {found!r}, expected {RESULT_FORMAT!r} "
                         "(written by another tiltedsam version)")
    return result
