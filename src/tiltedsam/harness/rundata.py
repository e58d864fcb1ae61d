"""A run's data and trained model, rebuilt from its config: the one place that maps a
:class:`~tiltedsam.harness.config.RunConfig` to :func:`~tiltedsam.harness.data.load_dataset`.

Training (:mod:`.train`), the flatness analysis (:func:`load_for_analysis`) and anything else that
needs a run's splits call :func:`load_run_data`, so a run and its analysis see the same examples,
the same label noise and the same tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .config import ConfigError, RunConfig, from_dict

__all__ = ["dataset_kwargs", "load_run_data", "AnalysisTarget", "load_for_analysis", "stack_dataset"]


def dataset_kwargs(config: RunConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`~tiltedsam.harness.data.load_dataset` for ``config``.

    A model that needs a particular encoding of its data (``minilm``: WordPiece ids,
    ``tokenizer="minilm"``) declares it in :attr:`ModelSpec.data_options`; it is filled in here when
    the data set takes that option and the config leaves it unset. An explicit conflicting choice
    is a :class:`ConfigError` naming both values.
    """
    from .data import DATASETS
    from .models import MODELS

    d = config.data
    options = dict(d.options)
    spec = MODELS.get(config.model.name)
    accepted = DATASETS[d.name].options if d.name in DATASETS else ()
    for key, needed in (getattr(spec, "data_options", None) or {}).items():
        if key not in accepted:
            continue  # the data set has no such option: the model's builder names the mismatch
        if key in options and options[key] != needed:
            raise ConfigError(f"data.options.{key} = {options[key]!r} does not fit model {config.model.name!r}, "
                              f"which needs {key} = {needed!r}")
        options[key] = needed
    return {"seed": config.seed, "label_noise": d.label_noise, "val_fraction": d.val_fraction,
            "test_fraction": d.test_fraction, "clean_validation": d.clean_validation, "data_dir": d.data_dir,
            "augment": d.augment, "limit": d.limit, "split_seed": d.split_seed, "noise_seed": d.noise_seed,
            **options}


def load_run_data(config: RunConfig) -> Any:
    """The :class:`~tiltedsam.harness.data.DataSplits` of ``config`` (its split, noise and options)."""
    from .data import load_dataset

    return load_dataset(config.data.name, **dataset_kwargs(config))


def stack_dataset(dataset: Any, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """All (input, label) pairs of a map-style dataset as two tensors."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    inputs, targets = [], []
    for x, y in loader:
        inputs.append(x)
        targets.append(torch.as_tensor(y))
    if not inputs:
        raise ValueError("the data split is empty")
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
    from .checkpoints import find_checkpoint, load_checkpoint
    from .models import build_model

    payload = load_checkpoint(path, map_location=device)
    config = from_dict(RunConfig, payload["config"])
    torch.manual_seed(config.seed)
    data = load_run_data(config)
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
