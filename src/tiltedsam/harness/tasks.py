"""Task-specific losses and metrics for the trainer: regression (STS-B) and GLUE's official metrics.

The trainer asks this module for its losses (:func:`training_loss`, :func:`evaluation_loss`) and, after
each epoch's evaluation, for the task's metrics (:func:`task_metrics`). Classification data sets that
are not GLUE get the plain cross-entropy and no extra metric, so their runs are unchanged.

GLUE (:mod:`.data.glue`): the official metric of each task is computed on the validation split and on
the test split (the official dev set): MCC (and accuracy) for CoLA, F1 and accuracy for MRPC/QQP,
Pearson and Spearman for STS-B, accuracy for the rest; MNLI also scores its second dev set (mismatched).
``val_metric``/``test_metric`` hold the *selection score*: MCC for CoLA, the mean of Pearson and
Spearman for STS-B, the mean of F1 and accuracy for MRPC/QQP, accuracy otherwise; the trainer's
best-validation epoch is chosen on ``val_metric`` when it is present.

Regression: one output, mean squared error ``mean((f(x) - y)^2)`` for training and evaluation;
label smoothing does not apply. The accuracy columns of a regression run hold its official score,
(Pearson + Spearman) / 2, so tables built on accuracy stay defined.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["is_regression", "training_loss", "evaluation_loss", "task_metrics", "summary_metrics", "TABLE1_GLUE_NUMBERS"]

#: the numbers Table 1 prints per GLUE task, in its column order; its AVG is their plain mean
#: (checked against the paper: ERM's 11 numbers average to 0.7716, printed 0.7715; TSAM's to 0.7801)
TABLE1_GLUE_NUMBERS = {"cola": ("mcc", "accuracy"), "wnli": ("accuracy",), "sst2": ("accuracy",),
                       "mnli": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",),
                       "mrpc": ("accuracy",), "qqp": ("accuracy",), "stsb": ("pearson", "spearman")}


def is_regression(data: Any) -> bool:
    return bool(getattr(data, "info", {}).get("regression"))


class _MSE(nn.Module):
    """Mean squared error of a one-output model: ``mean((outputs[:, 0] - targets)^2)``."""

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return torch.mean((outputs.reshape(-1).float() - targets.reshape(-1).float()) ** 2)


def training_loss(data: Any, label_smoothing: float) -> nn.Module:
    return _MSE() if is_regression(data) else nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def evaluation_loss(data: Any) -> nn.Module:
    return _MSE() if is_regression(data) else nn.CrossEntropyLoss()


@torch.no_grad()
def _predictions(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                 regression: bool) -> tuple[list[float], list[float]]:
    was_training = model.training
    model.eval()
    predictions: list[float] = []
    labels: list[float] = []
    for inputs, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        outputs = model(inputs.to(device))
        values = outputs.reshape(-1) if regression else outputs.argmax(1)
        predictions += values.float().cpu().tolist()
        labels += torch.as_tensor(targets).float().reshape(-1).tolist()
    model.train(was_training)
    return predictions, labels


def _selection_score(task: str, metrics: dict[str, float]) -> float:
    if "mcc" in metrics:
        return metrics["mcc"]
    return metrics.get("combined", metrics.get("accuracy", float("nan")))


def task_metrics(model: nn.Module, data: Any, batch_size: int, device: torch.device) -> dict[str, Any]:
    """The task's metrics on validation and test (and any ``data.extra_eval`` set), as metric-row
    columns; ``{}`` for data sets without task metrics. Single-process only (the predictions of the
    whole split are gathered here)."""
    task = getattr(data, "info", {}).get("glue_task")
    if task is None:
        return {}
    from .data.glue import glue_metric

    regression = is_regression(data)
    row: dict[str, Any] = {}
    sets: list[tuple[str, Dataset]] = [("val", data.val), ("test", data.test)]
    sets += list((getattr(data, "extra_eval", None) or {}).items())
    for prefix, dataset in sets:
        if len(dataset) == 0:
            continue
        predictions, labels = _predictions(model, dataset, batch_size, device, regression)
        try:
            metrics = glue_metric(task, predictions, labels)
        except ValueError:  # non-finite predictions: the divergence check reports it
            metrics = {}
        if not regression:
            metrics.setdefault("accuracy", sum(p == y for p, y in zip(predictions, labels)) / len(labels))
        for name, value in metrics.items():
            row[f"{prefix}_{name}"] = value
        if prefix in ("val", "test"):
            row[f"{prefix}_metric"] = _selection_score(task, metrics)
    if regression:  # no accuracy: the accuracy columns hold the official score, (Pearson + Spearman) / 2
        row["val_acc"], row["test_acc"] = row.get("val_metric", float("nan")), row.get("test_metric", float("nan"))
    return {k: (v if isinstance(v, float) and math.isfinite(v) else (float("nan") if isinstance(v, float) else v))
            for k, v in row.items()}


def summary_metrics(rows: list[dict[str, Any]], best_index: int) -> dict[str, Any]:
    """The task's final and best-validation-epoch test metrics for ``result.json`` (``{}`` without task metrics)."""
    final, best = rows[-1], rows[best_index]
    keys = [k for k in final if k.startswith("test_") and k not in ("test_loss", "test_acc")]
    out = {f"final_{k}": final[k] for k in keys}
    out.update({f"best_val_{k}": best.get(k) for k in keys})
    if "val_metric" in final:
        out["final_val_metric"] = final["val_metric"]
        out["best_val_metric"] = best.get("val_metric")
    return out

