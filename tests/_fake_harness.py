"""Throwaway stand-in for tiltedsam.harness.data/models (built on another branch).

Installed into ``sys.modules`` only when the real modules are not importable, so the harness tests
run before that branch is merged. Remove once it is.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def install() -> None:
    try:
        importlib.import_module("tiltedsam.harness.data")
        importlib.import_module("tiltedsam.harness.models")
        return
    except ModuleNotFoundError:
        pass

    @dataclass
    class DataSplits:
        name: str
        train: Any
        val: Any
        test: Any
        num_classes: int
        input_shape: tuple
        info: dict = field(default_factory=dict)

    def load_dataset(name, *, seed=0, label_noise=0.0, val_fraction=0.1, test_fraction=None,
                     clean_validation=False, data_dir=None, augment=False, limit=None):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        y = torch.tensor(d.target)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(y), generator=g)
        if limit:
            order = order[:limit]
        x, y = x[order], y[order]
        n_test = int(len(y) * (test_fraction or 0.2))
        n_val = int(len(y) * val_fraction)
        noisy = y.clone()
        flip = torch.rand(len(y), generator=g) < label_noise
        noisy[flip] = (y[flip] + torch.randint(1, 10, (int(flip.sum()),), generator=g)) % 10
        ds = torch.utils.data.TensorDataset
        val_labels = y if clean_validation else noisy
        return DataSplits(name, ds(x[n_test + n_val:], noisy[n_test + n_val:]), ds(x[n_test:n_test + n_val],
                          val_labels[n_test:n_test + n_val]), ds(x[:n_test], y[:n_test]), 10, (1, 8, 8),
                          {"fake": True})

    def build_model(name, data, **kwargs):
        if name == "mlp":
            return nn.Sequential(nn.Flatten(), nn.Linear(64, kwargs.get("hidden", 32)), nn.ReLU(),
                                 nn.Linear(kwargs.get("hidden", 32), 10))
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 64, 10))

    data_mod = types.ModuleType("tiltedsam.harness.data")
    data_mod.DataSplits = DataSplits
    data_mod.load_dataset = load_dataset
    models_mod = types.ModuleType("tiltedsam.harness.models")
    models_mod.build_model = build_model
    sys.modules["tiltedsam.harness.data"] = data_mod
    sys.modules["tiltedsam.harness.models"] = models_mod
    import tiltedsam.harness as harness

    harness.data = data_mod
    harness.models = models_mod
