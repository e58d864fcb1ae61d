"""``--engine ray``: every run of a sweep is a Ray task on a Ray cluster.

The driver (the ``tiltedsam sweep`` process) checks the sweep, claims the runs it will submit in the
index under its own lease (so a local sweep on the same output leaves them alone), and submits one
task per run with the sweep's resources (``cpus_per_run`` CPUs and as many torch threads,
``gpus_per_run`` GPUs). A task trains in its run directory (:func:`common.run_in_directory`) on a
file system every node sees, checked at start-up, and returns its outcome; only the driver writes
the index.

Why tasks, not Tune trials: a sweep here is a fixed grid whose bookkeeping (what is done, what is
held, what failed) already lives in the index, and whose resume point is the run directory's
checkpoint. Tune would add a second experiment state that must agree with the index, a second resume
mechanism, its own SIGINT handling and result directories, and nothing a fixed grid uses (search,
early stopping). Ray core's task semantics are exactly the wanted ones: ``max_retries`` re-executes a
task whose worker process died or whose node was lost (a *system* failure), and with
``retry_exceptions=False`` an exception raised by the run is not retried. Deterministic failures
(divergence, a bad config) are not even exceptions: the task returns them as a failed outcome,
recorded once.

Ctrl-C/SIGTERM cancel every task (``ray.cancel(force=True)`` kills their workers), mark the runs in
flight ``interrupted`` and shut down the Ray instance if this command started it. A driver killed
with ``kill -9`` takes the tasks it owns with it (Ray kills the tasks of a dead driver, and a Ray
instance the driver started has a reaper process); its leases become claimable at once on this host
(dead pid) and after ``lease_seconds`` elsewhere, and the rerun resumes every unfinished run from its
checkpoint and takes a run that had finished its ``result.json`` as done without training it again.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable

from ..sweep import SweepError, _catch_signals, _connect, _Heartbeat, _interrupted, _owner_id, _restore_signals
from .common import check_cluster_settings, claim_keys, plan_sweep, progress_of, record_outcome, run_in_directory

__all__ = ["run_sweep_on_ray", "check_shared_directory", "import_ray"]


def import_ray() -> Any:
    """``ray``, or :class:`SweepError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SweepError("--engine ray needs Ray, which is not installed: pip install 'tiltedsam[ray]'") from None
    return ray


def _ray_trial(config_data: dict[str, Any], num_threads: int, device: str | None, lock_wait: float,
               epoch_hook: Callable[[Any, dict[str, Any]], None] | None) -> dict[str, Any]:
    """The body of one Ray task: train the run in its directory and return the outcome."""
    outcome = run_in_directory(config_data, num_threads=num_threads, device=device, lock_wait=lock_wait,
                               epoch_hook=epoch_hook)
    outcome["pid"] = os.getpid()
    return outcome


def _sees_file(path: str) -> tuple[str, bool]:
    return socket.gethostname(), os.path.isfile(path)


def check_shared_directory(ray: Any, out_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`SweepError` unless every alive node of the cluster sees ``out_dir``: a token file
    written here must be readable by a task pinned to each node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out = Path(out_dir).resolve()
    token = out / f".shared-check-{uuid.uuid4().hex[:12]}"
    token.write_text(socket.gethostname() + "\n")
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_sees_file)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                           .remote(str(token)) for n in nodes], timeout=120)
    finally:
        token.unlink(missing_ok=True)
    blind = [f"{host} ({node.get('NodeManagerAddress', '?')})" for (host, seen), node in zip(answers, nodes)
             if not seen]
    if blind:
        raise SweepError(f"out_dir {str(out)!r} is not visible from Ray node(s) {', '.join(blind)}; the runs write "
                         "their directories there: put it on a file system every node mounts (NFS, Lustre, ...)")


def run_sweep_on_ray(sweep: Any, *, address: str | None = None, retry_failed: bool = True,
                     num_cpus: int | None = None, lock_wait: float | None = None,
                     epoch_hook: Callable[[Any, dict[str, Any]], None] | None = None) -> dict[str, int]:
    """Run every grid point of ``sweep`` that is not done as a Ray task; counts as :func:`run_sweep`.

    ``address``: ``None`` starts a Ray instance on this machine (``num_cpus`` CPUs, default all) and
    shuts it down at the end; ``"auto"`` or ``HOST:PORT`` joins a running cluster (left running).
    When Ray is already initialised in this process, that instance is used. A run whose worker
    process or node dies is retried up to ``sweep.max_retries`` times, resuming from its checkpoint.
    ``lock_wait``: seconds a retried run waits for the run directory's lock of a vanished node
    (default ``sweep.lease_seconds``). ``epoch_hook(config, metrics_row)`` runs in the task after
    each epoch (tests use it to kill a trial at a chosen point).
    """
    ray = import_ray()
    check_cluster_settings(sweep)
    plan = plan_sweep(sweep, retry_failed)
    owner = _owner_id()
    if not plan.todo:
        return {"done": 0, "failed": 0, "skipped": plan.index.skipped, "elsewhere": 0}
    started_ray = not ray.is_initialized()
    if started_ray:
        init: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": True}
        if address and address != "auto":
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, **init)
            else:
                ray.init(num_cpus=num_cpus, **init)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            raise SweepError(f"cannot start or reach {where}: {' '.join(str(exc).split())[:300]}") from None
    handlers: dict[int, Any] = {}
    refs: dict[Any, str] = {}
    connection = heartbeat = progress = None
    try:
        check_shared_directory(ray, sweep.out_dir)
        connection = _connect(Path(plan.db_file))
        claimed = claim_keys(connection, owner, plan, retry_failed=retry_failed, lease_seconds=sweep.lease_seconds)
        progress = progress_of(sweep, plan, claimed)
        heartbeat = _Heartbeat(plan.db_file, owner, interval=max(0.2, sweep.lease_seconds / 4))
        heartbeat.start()
        handlers = _catch_signals()
        device = "cuda" if sweep.gpus_per_run else None
        task = ray.remote(num_cpus=sweep.cpus_per_run, num_gpus=sweep.gpus_per_run, max_retries=sweep.max_retries,
                          retry_exceptions=False)(_ray_trial)
        wait = sweep.lease_seconds if lock_wait is None else lock_wait
        labels = {p.key: f"{p.label} seed {p.seed}" for p in plan.points}
        for key in claimed:
            ref = task.options(name=f"tiltedsam {labels[key]} {key}").remote(
                plan.config_of(key), sweep.cpus_per_run, device, wait, epoch_hook)
            refs[ref] = key
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in ready:
                key = refs.pop(ref)
                outcome = _outcome_of(ray, ref, sweep.max_retries)
                status = record_outcome(connection, key, owner, outcome)
                progress.finished(key, status)
    except KeyboardInterrupt as exc:
        def stop() -> None:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone: nothing to cancel
                    pass
            if heartbeat is not None:
                heartbeat.stop()
            if started_ray:
                ray.shutdown()

        raise _interrupted(exc, handlers, plan.db_file, owner, stop) from None
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if connection is not None:
            connection.close()
        if started_ray and ray.is_initialized():
            ray.shutdown()
        _restore_signals(handlers)
        if progress is not None:
            progress.bar.close()
    return progress.counts


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """:class:`SweepError` unless ``HOST:PORT`` accepts a TCP connection (``ray.init`` would keep
    retrying an unreachable head for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address!r} is invalid; allowed: auto or HOST:PORT (the head's GCS port, "
                         "6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SweepError(f"no Ray cluster answers at {address!r} ({exc.strerror or exc}); start one with "
                         "`ray start --head` or leave out --address to start Ray on this machine") from None


def _outcome_of(ray: Any, ref: Any, max_retries: int) -> dict[str, Any]:
    """A finished task's outcome; an exception the run raised, or a process/node that died more
    often than ``max_retries``, becomes a failed outcome (with the traceback or the cause)."""
    from ray import exceptions

    try:
        return ray.get(ref)
    except exceptions.RayTaskError as exc:  # the run raised something unexpected: not retried
        return {"status": "failed", "error": str(exc).strip()}  # names the exception, with the remote traceback
    except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.ObjectLostError,
            exceptions.TaskCancelledError, exceptions.RayError) as exc:
        return {"status": "failed", "error": f"the run's Ray worker or node died {max_retries + 1} time(s) "
                                             f"({type(exc).__name__}); rerun the sweep to resume it"}
