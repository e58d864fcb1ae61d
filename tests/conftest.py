"""Shared fixtures of the test suite."""

from __future__ import annotations

import pytest


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
