"""A minimal, readable training loop: SGD vs SAM vs TSAM on scikit-learn's bundled digits.

Everything runs in a few seconds on a CPU and needs no download (the 1,797 8x8 digit images ship
inside scikit-learn). The full experiment harness lives in :mod:`tiltedsam.harness`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ExampleResult:
    optimizer: str
    final_train_loss: float
    test_accuracy: float
    seconds: float
    grad_evals: int


def digits_tensors(seed: int = 0, test_fraction: float = 0.25) -> tuple[torch.Tensor, ...]:
    """Digits as float tensors in [0, 1], split with a seeded permutation: x_train, y_train, x_test, y_test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def small_mlp(in_features: int = 64, hidden: int = 64, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def train_digits(name: str, epochs: int = 15, seed: int = 0, batch_size: int = 64,
                 **optimizer_kwargs: Any) -> ExampleResult:
    """Train :func:`small_mlp` on digits with optimizer ``name`` from the registry."""
    from .optim.registry import create_optimizer

    x_train, y_train, x_test, y_test = digits_tensors(seed)
    torch.manual_seed(seed)
    model = small_mlp()
    settings = {"lr": 0.05, "momentum": 0.9, **optimizer_kwargs}
    optimizer = create_optimizer(name, model.parameters(), model=model, seed=seed, **settings)
    loss_fn = nn.CrossEntropyLoss()
    batches = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=batches)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x_train[idx], y_train[idx]

            def closure() -> torch.Tensor:
                loss = loss_fn(model(xb), yb)
                loss.backward()
                return loss

            optimizer.step(closure)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        train_loss = float(loss_fn(model(x_train), y_train))
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    steps = epochs * ((len(y_train) + batch_size - 1) // batch_size)
    return ExampleResult(name, train_loss, accuracy, seconds, steps * optimizer.grad_evals_per_step)


def run_example(epochs: int = 15, seed: int = 0) -> list[ExampleResult]:
    """SGD, SAM and TSAM (paper defaults t=20, s=3) on digits, same seed and epochs."""
    return [
        train_digits("sgd", epochs, seed),
        train_digits("sam", epochs, seed, rho=0.05),
        train_digits("tsam", epochs, seed, rho=0.05, tilt=20.0, num_samples=3, noise_radius=0.1),
    ]
