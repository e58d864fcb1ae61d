"""Where a sweep's runs train: this machine's worker processes (``local``, the default), a Ray
cluster (``ray``), or a SLURM cluster through submitit (``slurm``).

Every engine trains a run with the same function (:func:`common.run_in_directory`) and resumes it
from its run directory's checkpoint; only the process that started the sweep writes its index
(``sweep.db``). Ray and submitit are optional extras, imported only when their engine is chosen.
"""

from __future__ import annotations

from typing import Any

ENGINES = ("local", "ray", "slurm")

__all__ = ["ENGINES", "run_with_engine", "check_cluster_settings"]


def check_cluster_settings(sweep: Any) -> None:
    """The sweep's per-run resources: ``cpus_per_run`` >= 1, ``gpus_per_run`` >= 0, ``max_retries`` >= 0,
    and a CUDA ``run.device`` only with GPUs per run (a trial sees only the GPUs it was given)."""
    from ..config import ConfigError

    if not (isinstance(sweep.cpus_per_run, int) and sweep.cpus_per_run >= 1):
        raise ConfigError(f"cpus_per_run = {sweep.cpus_per_run!r} is invalid; allowed: an integer >= 1")
    if not (isinstance(sweep.gpus_per_run, (int, float)) and 0 <= sweep.gpus_per_run < 1e6):
        raise ConfigError(f"gpus_per_run = {sweep.gpus_per_run!r} is invalid; allowed: a number >= 0 "
                          "(a fraction shares one GPU between runs)")
    if not (isinstance(sweep.max_retries, int) and sweep.max_retries >= 0):
        raise ConfigError(f"max_retries = {sweep.max_retries!r} is invalid; allowed: an integer >= 0")
    device = str((sweep.base.get("run") or {}).get("device", "cpu"))
    if device.startswith("cuda") and not sweep.gpus_per_run:
        raise ConfigError(f"base.run.device = {device!r} needs gpus_per_run > 0 on a cluster engine (a run only "
                          "sees the GPUs it was given)")


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
