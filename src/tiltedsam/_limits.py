"""Upper bounds where a typo could take the machine down, each with its reason.

Every check raises ``ValueError`` (the harness's ``ConfigError`` is one) naming the key, the value,
the limit and why the limit exists, *before* anything is allocated or expanded.

* threads per process: at most ``4 x`` the machine's cores (and never more than 1024). More threads
  than cores only wait for each other; OpenBLAS aborts (and the process then segfaults) when asked
  for a hundred thousand.
* worker processes of a sweep: at most ``4 x`` the cores (each is a process with its own torch,
  a few hundred MB; beyond the cores they only queue).
* seeds of a comparison or sweep: at most 10,000 (the count is checked before any list is built).
* grid points of one sweep (optimizers x settings x seeds): at most 10,000 training runs (the
  product is computed from the axis lengths before the grid is expanded).
"""

from __future__ import annotations

import os

__all__ = ["max_threads", "max_workers", "MAX_SEEDS", "MAX_GRID_POINTS", "check_threads", "check_workers",
           "check_seed_count", "check_grid_points"]

MAX_SEEDS = 10_000
MAX_GRID_POINTS = 10_000


def _cores() -> int:
    return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    return min(1024, 4 * _cores())


def max_workers() -> int:
    return 4 * _cores()


def check_threads(key: str, value: int) -> None:
    if value > max_threads():
        raise ValueError(f"{key} = {value} is too many; allowed: at most {max_threads()} (4 x this machine's "
                         f"{_cores()} cores: more threads than cores only wait for each other, and the BLAS "
                         "library aborts when asked for very many)")


def check_workers(key: str, value: int) -> None:
    if value > max_workers():
        raise ValueError(f"{key} = {value} is too many; allowed: at most {max_workers()} (4 x this machine's "
                         f"{_cores()} cores: each worker is a process with its own torch, and beyond the cores "
                         "they only queue)")


def check_seed_count(key: str, value: int) -> None:
    if value > MAX_SEEDS:
        raise ValueError(f"{key} = {value} is too many; allowed: at most {MAX_SEEDS} seeds (each seed is a full "
                         "training run per optimizer)")


def check_grid_points(where: str, value: int) -> None:
    if value > MAX_GRID_POINTS:
        raise ValueError(f"{where} expands to {value:,} runs; allowed: at most {MAX_GRID_POINTS:,} per sweep (each "
                         "is a training run); split the sweep or use fewer axis values")
