"""Where a sweep's runs train: this machine's worker processes (``local``, the default), a Ray
cluster (``ray``), or a SLURM cluster through submitit (``slurm``).

Every engine trains a run with the same function (:func:`common.run_in_directory`) and resumes it
from its run directory's checkpoint; only the process that started the sweep writes its index
(``sweep.db``). Ray and submitit are optional extras, imported only when their engine is chosen.
"""

from __future__ import annotations

from typing import Any

from .common import check_cluster_settings

ENGINES = ("local", "ray", "slurm")

__all__ = ["ENGINES", "run_with_engine", "check_cluster_settings"]


def run_with_engine(sweep: Any, engine: str = "local", **options: Any) -> dict[str, int]:
    """Run ``sweep`` with ``engine``; ``options`` go to that engine (``address`` for Ray; ``partition``,
    ``time_minutes``, ``cluster`` for SLURM; ``retry_failed`` for all)."""
    if engine == "local":
        from ..sweep import run_sweep

        return run_sweep(sweep, **options)
    if engine == "ray":
        from .ray_engine import run_sweep_on_ray

        return run_sweep_on_ray(sweep, **options)
    if engine == "slurm":
        from .slurm import run_sweep_on_slurm

        return run_sweep_on_slurm(sweep, **options)
    from ..config import ConfigError

    raise ConfigError(f"engine = {engine!r} is not known; allowed: {', '.join(ENGINES)}")
