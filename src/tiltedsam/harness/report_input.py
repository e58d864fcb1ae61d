"""Reading a sweep that a user edited or a tool damaged: rows and run files that cannot be read are
named in one line each (run key, label, seed, what is wrong) and skipped, never averaged.

A finished run is used when its result (``result.json``, else a schema-2 database's ``result``
column) is a result-format JSON object with accuracies in [0, 1] and finite, non-negative counts
(:data:`_RESULT_FIELDS`), and its row has a JSON-object ``setting``, a valid run ``config`` and a
text ``run_dir``. An unreadable ``metrics.csv`` keeps the run without curves; a schema-2 database's
epoch rows must be JSON objects (non-numbers read as NaN). An unreadable failed run's setting is ``{}``.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, _nonfinite_from_strings, from_dict, to_dict
from .rundir import read_metrics, read_result

__all__ = ["load_checked", "failed_runs_checked", "skipped_markdown"]

#: result fields the report reads: name -> (kind, low, high); kind "acc" is a fraction in [0, 1]
_RESULT_FIELDS = {
    "final_test_acc": ("acc",), "best_val_test_acc": ("acc",), "best_val_acc": ("acc",),
    "best_val_epoch": ("int", 1), "epochs": ("int", 1), "steps": ("int", 0),
    "grad_evals": ("number", 0), "train_seconds": ("number", 0), "wall_seconds": ("number", 0),
    "grad_evals_per_step": ("positive",),
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _result_problem(result: Any) -> str | None:
    if not isinstance(result, dict):
        return f"result is {type(result).__name__}, not a JSON object"
    for name, (kind, *bound) in _RESULT_FIELDS.items():
        value = result.get(name)
        if kind == "acc":
            ok = _number(value) and 0 <= value <= 1
            allowed = "a fraction in [0, 1]"
        elif kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= bound[0]
            allowed = f"an integer >= {bound[0]}"
        elif kind == "positive":
            ok = _number(value) and value > 0
            allowed = "a number > 0"
        else:
            ok = _number(value) and value >= bound[0]
            allowed = f"a finite number >= {bound[0]}"
        if not ok:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            return f"result.{name} = {shown} (allowed: {allowed})"
    return None


def _json(text: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise ValueError(f"{what} is {'NULL' if text is None else type(text).__name__}, not JSON text")
    try:
        return _nonfinite_from_strings(json.loads(text))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{what} is not valid JSON ({type(exc).__name__})") from None


def _config_problem(config: Any) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(config, dict):
        return None, f"config is {type(config).__name__}, not a JSON object"
    missing = [k for k in ("data", "model", "optimizer", "batch_size", "label_smoothing") if k not in config]
    if missing:
        return None, f"config is not a valid run config (no {', '.join(missing)})"
    try:
        return to_dict(from_dict(RunConfig, config)), None  # every key the report reads, of its type
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as exc:
        return None, f"config is not a valid run config ({' '.join(str(exc).split())[:120]})"


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[0].split())[:160] or type(exc).__name__


def _run_result(row: sqlite3.Row) -> Any:
    """The run's ``result.json``, else (schema 2) the database's copy; ValueError naming what cannot be read."""
    file = Path(row["run_dir"]) / "result.json"
    if file.is_file():
        try:
            return read_result(row["run_dir"])
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{str(file)!r} cannot be read ({_first_line(exc)})") from None
    legacy = row["result"] if "result" in row.keys() else None
    if legacy is None:
        raise ValueError(f"its run directory has no result.json ({str(file)!r}; removed or moved?)")
    return _json(legacy, "result")


def _clean_epoch(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v if _number(v) or isinstance(v, str) and k == "ess_warning"
            else (float(v) if isinstance(v, float) else float("nan")) for k, v in row.items()}


def load_checked(connection: sqlite3.Connection, only_keys: set[str] | None = None
                 ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], list[str]]:
    """Finished runs (as :func:`tiltedsam.harness.sweep.iter_results` gives them, of ``only_keys``) and
    their epoch rows, and a line for each row or file skipped."""
    runs: list[dict[str, Any]] = []
    skipped: list[str] = []
    epochs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in connection.execute("SELECT * FROM runs WHERE status='done' ORDER BY rowid"):
        if only_keys is not None and r["run_key"] not in only_keys:
            continue
        where = f"run {r['run_key']!s:.16} ({r['label']!s:.40} seed {r['seed']!s:.20})"
        try:
            if not isinstance(r["seed"], int) or not isinstance(r["label"], str):
                raise ValueError("label or seed has the wrong type")
            if not isinstance(r["run_dir"], str) or not r["run_dir"]:
                raise ValueError(f"run_dir is {r['run_dir']!r}, not a path")
            setting = _json(r["setting"], "setting")
            if not isinstance(setting, dict):
                raise ValueError(f"setting is {type(setting).__name__}, not a JSON object")
            config, problem = _config_problem(_json(r["config"], "config"))
            if problem:
                raise ValueError(problem)
            result = _run_result(r)
            problem = _result_problem(result)
            if problem:
                raise ValueError(problem)
        except ValueError as exc:
            skipped.append(f"{where}: {exc}")
            continue
        runs.append({"run_key": r["run_key"], "label": r["label"], "optimizer": r["optimizer"], "seed": r["seed"],
                     "setting": setting, "config": config, "result": result, "run_dir": r["run_dir"]})
        metrics_file = Path(r["run_dir"]) / "metrics.csv"
        try:
            epochs[r["run_key"]] = [_clean_epoch(row) for row in read_metrics(r["run_dir"])]
        except (OSError, ValueError, UnicodeDecodeError, csv.Error, TypeError) as exc:
            skipped.append(f"{where}: {str(metrics_file)!r} cannot be read ({_first_line(exc)}); "
                           "the run is reported without its epoch curves")
    _legacy_epochs(connection, runs, epochs, skipped)
    return runs, epochs, skipped


def _legacy_epochs(connection: sqlite3.Connection, runs: list[dict[str, Any]],
                   epochs: dict[str, list[dict[str, Any]]], skipped: list[str]) -> None:
    """A schema-2 database's epoch rows, for the runs whose directory has no metrics.csv."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    missing = {r["run_key"] for r in runs if not epochs.get(r["run_key"])
               and not (Path(r["run_dir"]) / "metrics.csv").is_file()}
    if "epochs" not in tables or not missing:
        return
    bad_epochs: dict[str, int] = defaultdict(int)
    for r in connection.execute("SELECT run_key, epoch, metrics FROM epochs ORDER BY run_key, epoch"):
        if r["run_key"] not in missing:
            continue
        try:
            row = _json(r["metrics"], "metrics")
            if not isinstance(row, dict):
                raise ValueError
        except ValueError:
            bad_epochs[r["run_key"]] += 1
            continue
        epochs[r["run_key"]].append(_clean_epoch(row))
    for key, count in bad_epochs.items():
        skipped.append(f"run {key!s:.16}: {count} epoch row(s) whose metrics are not a JSON object")


def failed_runs_checked(connection: sqlite3.Connection, only_keys: set[str] | None = None) -> list[dict[str, Any]]:
    """Runs that failed or were interrupted: label, seed, setting (``{}`` when unreadable), status and
    the error's last line."""
    out = []
    for r in connection.execute("SELECT run_key, label, seed, setting, status, error FROM runs "
                                "WHERE status IN ('failed', 'interrupted') ORDER BY rowid"):
        if only_keys is not None and r["run_key"] not in only_keys:
            continue
        try:
            setting = _json(r["setting"], "setting")
        except ValueError:
            setting = {}
        error = r["error"] if isinstance(r["error"], str) else ""
        lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
        out.append({"run_key": r["run_key"], "label": str(r["label"]), "seed": r["seed"],
                    "setting": setting if isinstance(setting, dict) else {}, "status": r["status"],
                    "error": lines[-1] if lines else ""})
    return out


def skipped_markdown(skipped: list[str]) -> list[str]:
    """The report's section naming the skipped rows (empty when none)."""
    if not skipped:
        return []
    return ["## Skipped database rows", "",
            f"{len(skipped)} row(s) of the database could not be read (edited or damaged) and are not in any table:",
            "", *(f"- {line.replace('|', '/')}" for line in skipped), ""]
