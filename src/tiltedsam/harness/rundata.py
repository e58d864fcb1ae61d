"""A run's data and trained model, rebuilt from its config: the one place that maps a run config to
:func:`~tiltedsam.harness.data.load_dataset`, so that training and analysis see the same examples,
label noise and tokenizer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .checkpoint_checks import checked_config, load_weights
from .checkpoints import find_checkpoint, load_checkpoint
from .config import ConfigError, RunConfig, from_dict
from .data import DATASETS, load_dataset
from .models import MODELS, build_model

__all__ = ["dataset_kwargs", "load_run_data", "AnalysisTarget", "load_for_analysis", "stack_dataset"]


def dataset_kwargs(config: RunConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`~tiltedsam.harness.data.load_dataset` for ``config``, with the
    encoding the model declares in :attr:`ModelSpec.data_options` (``minilm``: ``tokenizer="minilm"``)
    where the data set takes it; a conflicting explicit choice is a :class:`ConfigError`."""
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
    """A trained model of a harness run with its data, ready for flatness analysis: ``loss_fn`` is the
    mean cross-entropy without label smoothing (the paper's flatness measures use the plain loss);
    ``train`` holds the labels the model was trained on (noisy under label noise)."""

    label: str
    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    train: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def load_for_analysis(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> AnalysisTarget:
    """Rebuild the model of a run (directory or checkpoint file) with its weights and data splits."""
    payload = load_checkpoint(path, map_location=device)
    file = find_checkpoint(path)
    config = checked_config(payload, file, lambda data: from_dict(RunConfig, data))
    torch.manual_seed(config.seed)
    data = load_run_data(config)
    model = build_model(config.model.name, data, **config.model.options)
    load_weights(model, payload, file)
    model.to(device).eval()
    result_file = file.parent / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    train = tuple(t.to(device) for t in stack_dataset(data.train))
    test = tuple(t.to(device) for t in stack_dataset(data.test))
    label = f"{config.display_label} (seed {config.seed})"
    return AnalysisTarget(label=label, model=model, loss_fn=nn.CrossEntropyLoss(), train=train, test=test,  # type: ignore[arg-type]
                          meta={"config": payload["config"], "result": result, "epoch": payload.get("epoch"),
                                "step": payload.get("step"), "package_version": payload.get("package_version")})
