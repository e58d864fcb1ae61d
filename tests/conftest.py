"""Shared fixtures and helpers of the test suite.

The optimizer helpers are plain functions (``from conftest import closure_for``), so module-level code and
the worker functions of spawned processes can use them too; the fixtures of the same names hand them to tests.
The harness fixtures build the smallest real runs on the offline digits set.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_classifier(seed: int = 0, inputs: int = 6, hidden: int = 16, classes: int = 3, batch: int = 32,
                    batchnorm: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``Linear -> [BatchNorm] -> Tanh -> Linear`` and a random batch ``(x, y)``, all drawn after
    ``torch.manual_seed(seed)`` (model first, then ``x``, then ``y``)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(inputs, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    model = nn.Sequential(*layers, nn.Tanh(), nn.Linear(hidden, classes))
    x = torch.randn(batch, inputs)
    y = torch.randint(0, classes, (batch,))
    return model, x, y


def closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, counter: list | None = None):
    """``closure()``: cross-entropy of ``model(x)`` on ``y``, ``backward()``, the loss; appends 1 to
    ``counter`` per call."""
    def closure() -> torch.Tensor:
        if counter is not None:
            counter.append(1)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def sliced_closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, counter: list[float] | None = None):
    """``closure(evaluation)`` on the rows ``evaluation.batch(x, y)`` asks for (sub-batch ascent);
    ``counter[0]`` adds up the evaluations in full-batch equivalents (rows used / rows in the batch)."""
    def closure(evaluation) -> torch.Tensor:
        x_used, y_used = evaluation.batch(x, y)
        if counter is not None:
            counter[0] += len(y_used) / len(y)
        loss = nn.functional.cross_entropy(model(x_used), y_used)
        loss.backward()
        return loss

    return closure


@pytest.fixture(name="tiny_classifier")
def _tiny_classifier_fixture():
    return tiny_classifier


@pytest.fixture(name="closure_for")
def _closure_for_fixture():
    return closure_for


# ---------------------------------------------------------------------------------------------
# Harness and CLI: tiny runs on the offline digits set
# ---------------------------------------------------------------------------------------------

#: the CLI flags of the smallest real run: digits, an MLP, one epoch, one thread
TINY_RUN_FLAGS = ["--set", "data.name=digits", "--set", "model.name=mlp", "--set", "budget.amount=1",
                  "--threads", "1"]


@pytest.fixture
def B() -> list[str]:
    """``--set data.name=digits --set model.name=mlp --set budget.amount=1 --threads 1`` (a fresh list)."""
    return list(TINY_RUN_FLAGS)


@pytest.fixture
def tiny_run_config(tmp_path):
    """``tiny_run_config(*overrides, out="run")``: a resolved RunConfig of a seconds-long digits run
    in ``tmp_path / out`` (240 examples, MLP, 2 epochs, one thread, no progress bar)."""
    from tiltedsam.harness.config import load_config

    def make(*overrides: str, out: str = "run"):
        return load_config(None, ["data.name=digits", "data.limit=240", "model.name=mlp", "budget.amount=2",
                                  "run.num_threads=1", "run.progress=false", f"run.out_dir={tmp_path / out}",
                                  *overrides])

    return make
