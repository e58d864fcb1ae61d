"""What every sweep engine shares: run one key in its run directory, and record the outcome in the index.

An engine (local processes, Ray, SLURM) decides *where* a run trains; the run itself is always
:func:`run_in_directory`: rebuild the config, hold the run directory's lock, resume from its
checkpoint (exact) and return a small picklable *outcome*. A trial never touches the sweep database;
only the driver writes the index (:func:`record_outcome`: status, error, finish time).

A deterministic failure (divergence, a config that cannot run, a refused checkpoint) is returned as
``{"status": "failed", "error": one line}`` and not retried; anything else (a killed process, a
vanished node) propagates, so the engine's retries run the key again from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ... import _json
from ..filesystems import NETWORK_FILESYSTEMS, filesystem_type, warn_if_network_filesystem  # re-exported

__all__ = ["check_cluster_settings", "lock_run_directory", "run_in_directory", "record_outcome", "SweepPlan", "plan_sweep", "claim_keys",
           "progress_of", "NETWORK_FILESYSTEMS", "filesystem_type", "warn_if_network_filesystem"]


def lock_run_directory(run_dir: str | os.PathLike[str], wait: float = 0.0, owner: str | None = None) -> Any:
    """Take ``run_dir``'s :class:`..runlock.RunDirectoryLock` (created if missing), retrying for up to
    ``wait`` seconds (a vanished node's lock on a network file system lasts until its lease expires).
    Returns the held lock; :class:`..runlock.RunDirectoryBusy` when it is still held after ``wait``."""
    from ..runlock import RunDirectoryBusy, RunDirectoryLock

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunDirectoryLock(run_dir, owner=owner or f"{socket.gethostname()}:{os.getpid()}")
    deadline = time.monotonic() + wait
    while True:
        try:
            return lock.acquire()
        except RunDirectoryBusy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def run_in_directory(config_data: dict[str, Any], *, num_threads: int = 0, device: str | None = None,
                     lock_wait: float = 0.0,
                     epoch_hook: Callable[[Any, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one resolved run config (a dict as stored in the sweep index) in its run directory.

    Resumes from the directory's checkpoint; a run whose ``result.json`` is already there for this
    run key is not trained again. ``num_threads`` (torch threads, unless the config sets them) and
    ``device`` override the config's ``[run]`` section, which is not part of the run key.
    ``epoch_hook(config, metrics_row)`` is called after each epoch's row is on disk.

    Returns ``{"status": "done", "host": ..., "device": ...}`` (the epochs and result are in the run
    directory) or ``{"status": "failed", "error": one line, "host": ...}`` for a deterministic
    failure; every other exception propagates (the engine may retry).
    """
    from ..checkpoints import CHECKPOINT_NAME, CheckpointError
    from ..config import ConfigError, RunConfig, from_dict, run_key
    from ..rundir import read_result
    from ..sweep import _error_text
    from ..train import RunDiverged, train

    host = socket.gethostname()
    try:
        config = from_dict(RunConfig, config_data)
    except ConfigError as exc:
        return {"status": "failed", "error": _error_text(exc), "host": host}
    if num_threads and not config.run.num_threads:
        config.run.num_threads = num_threads
    if device:
        config.run.device = device
    config.run.progress = False
    run_dir = Path(config.run.out_dir)
    with lock_run_directory(run_dir, wait=lock_wait):  # train() may take it again: re-entrant
        finished = False
        if (run_dir / "result.json").is_file() and (run_dir / CHECKPOINT_NAME).is_file():
            try:
                finished = read_result(run_dir).get("run_key") == run_key(config)
            except (OSError, ValueError):
                finished = False
        if not finished:  # else it finished before (e.g. the driver died before recording it)
            hook = None if epoch_hook is None else (lambda row: epoch_hook(config, row))
            try:
                train(config, resume=True, on_epoch=hook)
            except (RunDiverged, ConfigError, CheckpointError) as exc:
                return {"status": "failed", "error": _error_text(exc), "host": host}
    return {"status": "done", "host": host, "device": config.run.device}


def record_outcome(connection: sqlite3.Connection, key: str, owner: str, outcome: dict[str, Any]) -> str:
    """Write ``outcome`` (status, finish time, error) into the sweep index where ``owner`` still holds
    the run; returns the status. Only the driver calls this."""
    if outcome["status"] == "done":
        connection.execute("UPDATE runs SET status='done', finished=?, error=NULL WHERE run_key=? AND owner=?",
                           (time.time(), key, owner))
    else:
        connection.execute("UPDATE runs SET status='failed', finished=?, error=? WHERE run_key=? AND owner=?",
                           (time.time(), outcome["error"], key, owner))
    return outcome["status"]


# ---------------------------------------------------------------------- the driver's side
@dataclass
class SweepPlan:
    """The local engine's plan (:func:`..sweep._plan`: the claimable keys longest first, their cost,
    the index file, when this sweep started) and every grid point, for the cluster engines."""

    points: list[Any]            # every GridPoint of the sweep
    index: Any                   # sweep._Plan

    @property
    def todo(self) -> list[str]:
        return self.index.todo

    @property
    def db_file(self) -> str:
        return self.index.db_file

    @property
    def since(self) -> float:
        return self.index.since

    def config_of(self, key: str) -> dict[str, Any]:
        """The resolved config of ``key`` as a dict, with an absolute run directory (trials may
        start in another working directory, on another node)."""
        from ..config import to_dict

        point = next(p for p in self.points if p.key == key)
        data = json.loads(_json.dumps(to_dict(point.config), nonfinite="string"))
        data["run"]["out_dir"] = str(Path(point.config.run.out_dir).resolve())
        return data


def progress_of(sweep: Any, plan: SweepPlan, claimed: list[str]) -> Any:
    """The local engine's :class:`..sweep._Progress` over the ``claimed`` runs; ``elsewhere`` counts the
    runs left to another sweep process."""
    from dataclasses import replace

    from ..sweep import _Progress

    progress = _Progress(sweep, replace(plan.index, todo=list(claimed), budget=len(claimed)))
    progress.counts["elsewhere"] = len(plan.todo) - len(claimed)
    return progress


def plan_sweep(sweep: Any, retry_failed: bool = True) -> SweepPlan:
    """The local engine's set-up (:func:`..sweep.expand_grid`, :func:`..sweep._plan`) without its
    network-file-system warning (a cluster's run directories are on one by design)."""
    from ..sweep import _plan, expand_grid

    points = expand_grid(sweep)  # checks every point before anything is written
    return SweepPlan(points, _plan(sweep, points, retry_failed, max_runs=None))


def claim_keys(connection: sqlite3.Connection, owner: str, plan: SweepPlan, *, retry_failed: bool,
               lease_seconds: float, limit: int | None = None) -> list[str]:
    """Claim every run of ``plan.todo`` that no live lease holds (up to ``limit``) for ``owner``."""
    from ..sweep import claim_run

    claimed: list[str] = []
    while limit is None or len(claimed) < limit:
        key = claim_run(connection, owner, [k for k in plan.todo if k not in claimed], since=plan.since,
                        retry_failed=retry_failed, lease_seconds=lease_seconds)
        if key is None:
            break
        claimed.append(key)
    return claimed


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
