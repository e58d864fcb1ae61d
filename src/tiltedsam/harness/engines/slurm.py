"""``--engine slurm``: the runs of a sweep as a SLURM job array, submitted through submitit.

The driver (on a login node) checks the sweep, claims the runs it submits under its lease, and
submits one array task per run (``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs, the partition and time
limit). Each task trains in its run directory (:func:`common.run_in_directory`) on the cluster's
shared file system. On preemption or at the time limit SLURM signals the task; submitit then calls
:meth:`SlurmTrial.checkpoint`, which requeues the same call: the run's own checkpoint (written after
every epoch) is the state, so the requeued task resumes from the last epoch. The driver polls the
jobs, reads each outcome back and records it in the sweep's index; only it writes the index.

The job ids are kept in ``out_dir/slurm/jobs.json``: a driver that died and is started again
re-attaches to the jobs still queued or running instead of submitting them twice, and takes the
result of a job that finished meanwhile. ``cluster="local"`` runs the same code with submitit's
local executor (one process per task, on this machine), which is how it is tested.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ... import _json
from ..._atomic import atomic_write
from ..config import ConfigError
from ..sweep import SweepError, _catch_signals, _connect, _Heartbeat, _interrupted, _owner_id, _restore_signals
from .common import check_cluster_settings, claim_keys, plan_sweep, progress_of, record_outcome, run_in_directory

__all__ = ["run_sweep_on_slurm", "SlurmTrial", "import_submitit"]

_ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                  "REQUEUE_HOLD", "REQUEUE_FED", "UNKNOWN"}


def import_submitit() -> Any:
    """``submitit``, or :class:`SweepError` saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise SweepError("--engine slurm needs submitit, which is not installed: pip install 'tiltedsam[slurm]'") \
            from None
    return submitit


class SlurmTrial:
    """One run as a submitit job: calling it trains the run (resuming from its checkpoint); on
    preemption or time-out submitit calls :meth:`checkpoint`, which requeues the same call."""

    def __call__(self, config_data: dict[str, Any], num_threads: int, device: str | None, lock_wait: float,
                 epoch_hook: Callable[[Any, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        import os

        outcome = run_in_directory(config_data, num_threads=num_threads, device=device, lock_wait=lock_wait,
                                   epoch_hook=epoch_hook)
        outcome["pid"] = os.getpid()
        return outcome

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """The run directory's checkpoint already holds the state: requeue the same call."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _jobs_file(out_dir: str | Path) -> Path:
    return Path(out_dir) / "slurm" / "jobs.json"


def _load_job_ids(out_dir: str | Path) -> dict[str, str]:
    try:
        return dict(json.loads(_jobs_file(out_dir).read_text()))
    except (OSError, ValueError):
        return {}


def run_sweep_on_slurm(sweep: Any, *, retry_failed: bool = True, partition: str | None = None,
                       time_minutes: int | None = None, max_parallel: int | None = None, cluster: str | None = None,
                       poll_seconds: float = 5.0, lock_wait: float | None = None,
                       epoch_hook: Callable[[Any, dict[str, Any]], None] | None = None,
                       on_submitted: Callable[[dict[str, Any]], None] | None = None) -> dict[str, int]:
    """Run every grid point of ``sweep`` that is not done as a task of a SLURM job array; counts as
    :func:`run_sweep`. ``cluster``: ``None`` lets submitit detect SLURM, ``"local"`` runs the tasks
    here (tests), ``"debug"`` in this process. ``partition``/``time_minutes``/``max_parallel``: the
    partition, the time limit per run (default 60 minutes) and how many array tasks run at once.
    ``on_submitted(jobs by run key)`` is called once the jobs are submitted (tests use it)."""
    submitit = import_submitit()
    check_cluster_settings(sweep)
    if time_minutes is not None and time_minutes < 1:
        raise ConfigError(f"--time-minutes {time_minutes!r} is invalid; allowed: an integer >= 1")
    if max_parallel is not None and max_parallel < 1:
        raise ConfigError(f"--max-parallel {max_parallel!r} is invalid; allowed: an integer >= 1")
    plan = plan_sweep(sweep, retry_failed)
    owner = _owner_id()
    if not plan.todo:
        return {"done": 0, "failed": 0, "skipped": plan.index.skipped, "elsewhere": 0}
    folder = Path(sweep.out_dir).resolve() / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    parameters: dict[str, Any] = {"name": f"tiltedsam-{sweep.name}", "timeout_min": time_minutes or 60,
                                  "cpus_per_task": sweep.cpus_per_run, "tasks_per_node": 1, "nodes": 1}
    if sweep.gpus_per_run:
        parameters["gpus_per_node"] = int(max(1, round(sweep.gpus_per_run)))
    if partition:
        parameters["slurm_partition"] = partition
    if max_parallel:
        parameters["slurm_array_parallelism"] = max_parallel
    executor.update_parameters(**parameters)
    device = "cuda" if sweep.gpus_per_run else None
    wait = sweep.lease_seconds if lock_wait is None else lock_wait

    handlers: dict[int, Any] = {}
    jobs: dict[str, Any] = {}
    connection = heartbeat = progress = None
    try:
        connection = _connect(Path(plan.db_file))
        claimed = claim_keys(connection, owner, plan, retry_failed=retry_failed, lease_seconds=sweep.lease_seconds)
        progress = progress_of(sweep, plan, claimed)
        heartbeat = _Heartbeat(plan.db_file, owner, interval=max(0.2, sweep.lease_seconds / 4))
        heartbeat.start()
        handlers = _catch_signals()
        known = _load_job_ids(sweep.out_dir)
        to_submit = []
        for key in claimed:  # a job of an earlier driver that is still queued or running: attach to it
            job = _reattach(submitit, executor, folder, known.get(key))
            if job is not None:
                jobs[key] = job
            else:
                to_submit.append(key)
        if to_submit:
            with executor.batch():  # one job array
                submitted = [(key, executor.submit(SlurmTrial(), plan.config_of(key), sweep.cpus_per_run, device,
                                                   wait, epoch_hook)) for key in to_submit]
            jobs.update(submitted)
        known.update({key: str(job.job_id) for key, job in jobs.items()})
        _jobs_file(sweep.out_dir).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(_jobs_file(sweep.out_dir), _json.dumps(known, indent=2) + "\n")
        if on_submitted is not None:
            on_submitted(dict(jobs))
        pending = dict(jobs)
        while pending:
            finished = [key for key, job in pending.items() if job.done()]
            if not finished:
                time.sleep(poll_seconds)
                continue
            for key in finished:
                job = pending.pop(key)
                status = record_outcome(connection, key, owner, _outcome_of(job))
                progress.finished(key, status)
    except KeyboardInterrupt as exc:
        def stop() -> None:
            for job in jobs.values():
                try:
                    job.cancel(check=False)
                except Exception:  # noqa: BLE001 - finished or unknown to the scheduler: nothing to cancel
                    pass
            if heartbeat is not None:
                heartbeat.stop()

        raise _interrupted(exc, handlers, plan.db_file, owner, stop) from None
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if connection is not None:
            connection.close()
        _restore_signals(handlers)
        if progress is not None:
            progress.bar.close()
    return progress.counts


def _reattach(submitit: Any, executor: Any, folder: Path, job_id: str | None) -> Any:
    """The job ``job_id`` of an earlier driver when SLURM still runs or queues it, or when it finished
    with a result to read; else ``None`` (submit anew)."""
    if not job_id or executor.cluster != "slurm":
        return None
    job = submitit.SlurmJob(folder=folder, job_id=job_id)
    try:
        state = job.state
    except Exception:  # noqa: BLE001 - sacct unavailable or the job is forgotten
        return None
    if state in _ACTIVE_STATES or (state == "COMPLETED" and job.paths.result_pickle.exists()):
        return job
    return None


def _outcome_of(job: Any) -> dict[str, Any]:
    """A finished job's outcome; a job that raised, was cancelled, or ran out of requeues is failed."""
    try:
        return job.result()
    except Exception as exc:  # noqa: BLE001 - submitit's FailedJobError/UncompletedJobError carry the log tail
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return {"status": "failed", "error": f"SLURM job {job.job_id} failed: " + (lines[-1] if lines else
                                                                                    type(exc).__name__)}
