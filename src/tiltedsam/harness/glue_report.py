"""GLUE results of a sweep as Table 1 prints them: one row per optimizer, one column per task, and AVG.

Per optimizer label and task, the setting (lr, rho, t, ...) with the best mean validation score over
seeds (the task's official metric, ``best_val_metric``) is chosen; its test numbers (the dev set's, at the
best-validation epoch) are averaged over seeds. The cells are the numbers Table 1 shows
(:data:`~.tasks.TABLE1_GLUE_NUMBERS`: CoLA MCC/accuracy, STS-B Pearson/Spearman, MNLI matched accuracy
with mismatched beside it, accuracy elsewhere; MRPC/QQP F1 in their own columns) and AVG is the plain
mean of Table 1's numbers, as the paper computes it. A task without results leaves AVG undefined ("-").
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .._tables import markdown_table
from .sweep import iter_results, open_database
from .tasks import TABLE1_GLUE_NUMBERS

__all__ = ["glue_table", "glue_rows"]

_ORDER = ["cola", "wnli", "sst2", "mnli", "qnli", "rte", "mrpc", "qqp", "stsb"]


def glue_rows(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{label: {task: {metric: mean over seeds}}}`` of the best-validation setting per label and task."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in results:
        task = run["config"].get("data", {}).get("options", {}).get("task")
        if task is None:
            continue
        setting = repr(sorted((k, v) for k, v in (run["setting"] or {}).items() if k != "data.options.task"))
        groups[(run["label"], task, setting)].append(run["result"])

    def mean(values: list[Any]) -> float:
        finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        return sum(finite) / len(finite) if finite else float("nan")

    best: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
    for (label, task, _), runs in groups.items():
        score = mean([r.get("best_val_metric") for r in runs])
        score = score if math.isfinite(score) else -math.inf
        if (label, task) not in best or score > best[(label, task)][0]:
            best[(label, task)] = (score, runs)
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (label, task), (_, runs) in best.items():
        keys = {k[len("best_val_test_"):] for r in runs for k in r if k.startswith("best_val_test_")}
        table[label][task] = {k: mean([r.get(f"best_val_test_{k}") for r in runs]) for k in keys}
        table[label][task]["seeds"] = len(runs)
    return dict(table)


def glue_table(results: list[dict[str, Any]]) -> str:
    """Markdown table in Table 1's layout, with the GLUE average; ``""`` when no run is a GLUE task."""
    table = glue_rows(results)
    if not table:
        return ""
    rows = []
    for label, tasks in table.items():
        cells, numbers = [], []
        for task in _ORDER:
            metrics = tasks.get(task)
            if metrics is None:
                cells.append("-")
                numbers.append(float("nan"))
                continue
            values = [metrics.get(name, float("nan")) for name in TABLE1_GLUE_NUMBERS[task]]
            numbers += values
            cell = "/".join(f"{v:.4f}" for v in values)
            if task == "mnli" and "mismatched_accuracy" in metrics:
                cell += f" (mm {metrics['mismatched_accuracy']:.4f})"
            if task in ("mrpc", "qqp") and "f1" in metrics:
                cell += f" (F1 {metrics['f1']:.4f})"
            cells.append(cell)
        average = sum(numbers) / len(numbers) if all(math.isfinite(v) for v in numbers) else float("nan")
        rows.append([label, *cells, f"{average:.4f}" if math.isfinite(average) else "-"])
    header = ["objective", *(t.upper() for t in _ORDER), "AVG"]
    return ("## GLUE (Table 1 layout; test = dev set, best-validation setting and epoch, mean over seeds)\n\n"
            + markdown_table(header, rows) + "\n\nAVG = plain mean of the numbers Table 1 shows (CoLA MCC and accuracy, "
            "STS-B Pearson and Spearman, one accuracy per other task).\n")


def glue_table_from_database(path: str | Path) -> str:
    connection = open_database(path)
    try:
        return glue_table(list(iter_results(connection)))
    finally:
        connection.close()
