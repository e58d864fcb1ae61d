"""Checkpoints of harness runs: atomic save, checked load, and loading a run for analysis.

A checkpoint (``checkpoint.pt`` in the run directory, rewritten after every epoch) is a
``torch.save`` of a dict::

    format            "tiltedsam.checkpoint/1"
    package_version   tiltedsam.__version__ that wrote it
    config            the resolved RunConfig as a dict
    model             model.state_dict()
    optimizer         optimizer.state_dict() (base state, own settings, noise generator)
    epoch, step, grad_evals, train_seconds, wall_seconds
    rng               {"torch", "numpy", "python", "loader"}: global RNG states and the shuffling generator
    metrics           the per-epoch metric rows so far (metrics.csv is rewritten from them on resume)
    finished          True once the budget is spent

It is written to a temporary file next to the target and moved into place with ``os.replace``,
so a crash leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._atomic import atomic_write_with

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "find_checkpoint",
           "AnalysisTarget", "load_for_analysis", "stack_dataset"]

CHECKPOINT_FORMAT = "tiltedsam.checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or of another format."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """``torch.save`` ``payload`` (plus the format tag and version) to ``path`` atomically."""
    from .._version import __version__

    payload = {"format": CHECKPOINT_FORMAT, "package_version": __version__, **payload}
    atomic_write_with(path, lambda temporary: torch.save(payload, temporary))


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file: ``path`` itself, or ``path/checkpoint.pt`` for a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r} (expected a run directory holding "
                              f"{CHECKPOINT_NAME} or the file itself)")
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint`."""
    file = find_checkpoint(path)
    try:
        # weights_only: the payload is tensors, numbers, strings and numpy's RNG state tuple
        payload = torch.load(file, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {str(file)!r}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{str(file)!r} is not a tiltedsam checkpoint of format {CHECKPOINT_FORMAT!r} "
                              f"(found {found!r}); it was written by another version or program")
    return payload


def stack_dataset(dataset: Any, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """All (input, label) pairs of a map-style dataset as two tensors."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    inputs, targets = [], []
    for x, y in loader:
        inputs.append(x)
        targets.append(torch.as_tensor(y))
    if not inputs:
        raise CheckpointError("the data split is empty")
    return torch.cat(inputs), torch.cat(targets)


@dataclass
class AnalysisTarget:
    """A trained model of a harness run with its data, ready for flatness analysis.

    ``loss_fn(outputs, targets)`` is the mean cross-entropy *without* label smoothing (the plain
    empirical loss the paper's sharpness/flatness measures are defined on; the run's training loss
    used smoothing ``meta["config"]["label_smoothing"]``). ``train`` holds the training split with
    the labels the model was trained on (noisy, if the run used label noise); ``test`` the test split.
    """

    label: str
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def load_for_analysis(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> AnalysisTarget:
    """Rebuild the model of a run (directory or checkpoint file) with its weights and data splits."""
    import json

    from .config import RunConfig, from_dict
    from .data import load_dataset
    from .models import build_model
    from .train import dataset_kwargs

    payload = load_checkpoint(path, map_location=device)
    config = from_dict(RunConfig, payload["config"])
    torch.manual_seed(config.seed)
    data = load_dataset(config.data.name, **dataset_kwargs(config))
    model = build_model(config.model.name, data, **config.model.options)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    result: dict[str, Any] = {}
    result_file = find_checkpoint(path).parent / "result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    train = tuple(t.to(device) for t in stack_dataset(data.train))
    test = tuple(t.to(device) for t in stack_dataset(data.test))
    label = f"{config.display_label} (seed {config.seed})"
    return AnalysisTarget(label=label, model=model, loss_fn=nn.CrossEntropyLoss(), train=train, test=test,  # type: ignore[arg-type]
                          meta={"config": payload["config"], "result": result, "epoch": payload.get("epoch"),
                                "step": payload.get("step"), "package_version": payload.get("package_version")})
