"""What every sweep engine shares: run one key in its run directory, and record the outcome in the index.

An engine (local worker processes, Ray, SLURM) decides *where* a run trains; the run itself is always
:func:`run_in_directory`: rebuild the resolved config, hold the run directory's lock, resume from its
checkpoint when there is one (``train(resume=True)`` is exact), and return a small picklable
*outcome*. It never touches the sweep database: on a cluster only the driver writes the index
(:func:`record_outcome`); a trial writes nothing but its run directory.

Failures come in two kinds. A deterministic one (the run diverged, the config cannot run, the
checkpoint is refused) would fail again anywhere: it is returned as ``{"status": "failed", "error":
one line}`` and recorded once, not retried. Anything else (the process was killed, the node vanished,
an unexpected exception) propagates, so the engine's retry machinery can run the key again; the retry
resumes from the last epoch's checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ... import _json
from ..._atomic import atomic_write

__all__ = ["RunDirectoryBusy", "hold_run_directory", "run_in_directory", "record_outcome", "SweepPlan",
           "plan_sweep", "claim_keys", "NETWORK_FILESYSTEMS", "filesystem_type", "warn_if_network_filesystem"]

LOCK_NAME = ".run.lock"


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory's lock."""


@contextlib.contextmanager
def hold_run_directory(run_dir: str | os.PathLike[str], wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive OS lock on ``run_dir`` (``flock`` on ``run_dir/.run.lock``) while training there.

    The minimal lock the engines need: the kernel releases it when the holder dies (``kill -9``
    included), so a retried run takes it over at once; on a network file system a lock of a vanished
    node lasts until the server's lease expires, hence ``wait`` (seconds to keep trying). The file
    names its holder (``host:pid``) for the error message and for tests. Raises
    :class:`RunDirectoryBusy` when the lock is still held after ``wait``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                    raise RunDirectoryBusy(f"run directory {str(run_dir)!r} is in use by {holder}") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def run_in_directory(config_data: dict[str, Any], *, num_threads: int = 0, device: str | None = None,
                     lock_wait: float = 0.0,
                     epoch_hook: Callable[[Any, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one resolved run config (a dict as stored in the sweep index) in its run directory.

    Resumes from the directory's checkpoint; a run whose ``result.json`` is already there for this
    run key is not trained again (its result is returned). ``num_threads`` (torch threads, unless the
    config sets them) and ``device`` override the config's ``[run]`` section, which is not part of
    the run key. ``epoch_hook(config, metrics_row)`` is called after each epoch's checkpoint.

    Returns ``{"status": "done", "result": ..., "epochs": [metrics rows], "host": ...}`` or
    ``{"status": "failed", "error": one line, "host": ...}`` for a deterministic failure; every
    other exception propagates (the engine may retry).
    """
    from ..checkpoints import CHECKPOINT_NAME, CheckpointError, load_checkpoint
    from ..config import ConfigError, RunConfig, from_dict, run_key
    from ..sweep import _error_text
    from ..train import RunDiverged, read_result, train

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
    key = run_key(config)
    with hold_run_directory(run_dir, wait=lock_wait):
        result = None
        if (run_dir / "result.json").is_file() and (run_dir / CHECKPOINT_NAME).is_file():
            try:
                previous = read_result(run_dir)
            except (OSError, ValueError):
                previous = None
            if previous is not None and previous.get("run_key") == key:
                result = previous  # finished before (e.g. the driver died before recording it)
        if result is None:
            hook = None if epoch_hook is None else (lambda row: epoch_hook(config, row))
            try:
                result = train(config, resume=True, on_epoch=hook)
            except (RunDiverged, ConfigError, CheckpointError) as exc:
                return {"status": "failed", "error": _error_text(exc), "host": host}
        epochs = load_checkpoint(run_dir)["metrics"]
    return {"status": "done", "result": result, "epochs": epochs, "host": host, "device": config.run.device}


def record_outcome(connection: sqlite3.Connection, key: str, owner: str, outcome: dict[str, Any]) -> str:
    """Write ``outcome`` (from :func:`run_in_directory`) into the sweep index, only where ``owner``
    still holds the run; returns the status written. Only the driver calls this."""
    now = time.time()
    connection.execute("BEGIN IMMEDIATE")
    try:
        if outcome["status"] == "done":
            connection.execute("DELETE FROM epochs WHERE run_key=?", (key,))
            connection.executemany("INSERT INTO epochs VALUES (?, ?, ?)",
                                   [(key, r["epoch"], _json.dumps(r)) for r in outcome.get("epochs", [])])
            connection.execute("UPDATE runs SET status='done', finished=?, result=?, error=NULL "
                               "WHERE run_key=? AND owner=?", (now, _json.dumps(outcome["result"]), key, owner))
        else:
            connection.execute("UPDATE runs SET status='failed', finished=?, error=? WHERE run_key=? AND owner=?",
                               (now, outcome["error"], key, owner))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return outcome["status"]


# ---------------------------------------------------------------------- the driver's side
@dataclass
class SweepPlan:
    points: list[Any]            # every GridPoint of the sweep
    todo: list[str]              # run keys not done yet, longest first
    db_file: str                 # absolute path of sweep.db
    since: float                 # when this sweep started (failed runs before it may be retried)
    cost: dict[str, float]       # run key -> expected gradient evaluations (progress weights)

    def config_of(self, key: str) -> dict[str, Any]:
        """The resolved config of ``key`` as a dict, with an absolute run directory (trials may
        start in another working directory, on another node)."""
        from ..config import to_dict

        point = next(p for p in self.points if p.key == key)
        data = json.loads(_json.dumps(to_dict(point.config), nonfinite="string"))
        data["run"]["out_dir"] = str(Path(point.config.run.out_dir).resolve())
        return data


def plan_sweep(sweep: Any, retry_failed: bool = True) -> SweepPlan:
    """Check the whole sweep, write ``sweep.json``, register the grid in the index and list what is
    left to do: the same first steps as the local engine."""
    from ..config import to_dict
    from ..sweep import SweepError, database_path, expand_grid, open_database, register_points
    from ..train import resolve_budget

    points = expand_grid(sweep)
    out = Path(sweep.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "sweep.json", _json.dumps(to_dict(sweep), nonfinite="string", indent=2) + "\n")
    except OSError as exc:
        raise SweepError(f"cannot write the sweep to out_dir {str(out)!r}: {exc.strerror or exc}") from None
    since = time.time()
    connection = open_database(out, create=True)
    try:
        register_points(connection, points)
        wanted = {p.key for p in points}
        statuses = ("pending", "running", "interrupted", "failed") if retry_failed else \
            ("pending", "running", "interrupted")
        todo = [r["run_key"] for r in connection.execute(
            f"SELECT run_key FROM runs WHERE status IN ({','.join('?' * len(statuses))}) ORDER BY rowid", statuses)
            if r["run_key"] in wanted]
    finally:
        connection.close()
    cost = {p.key: resolve_budget(p.config, steps_per_epoch=1000).total_grad_evals for p in points}
    todo.sort(key=lambda key: -cost[key])
    return SweepPlan(points, todo, str(database_path(out).resolve()), since, cost)


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


# ---------------------------------------------------------------------- network file systems
#: file system types on which SQLite's WAL mode (shared memory between processes) is not safe
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "fuse.ceph", "9p", "afs", "ocfs2", "gfs2", "panfs", "fuse.s3fs", "fuse.gcsfuse", "wekafs"})


def filesystem_type(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system holding ``path`` (the longest mount point above it in
    ``/proc/mounts``), or ``None`` where that file cannot be read (not Linux)."""
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    best, kind = "", None
    try:
        with open(mounts) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (str(target) == point or str(target).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def warn_if_network_filesystem(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> str | None:
    """Warn (and return the type) when ``path`` is on a network file system: the local engine's
    SQLite index needs every sweep process on one host and a local disk; clusters use
    ``--engine ray`` or ``--engine slurm``."""
    kind = filesystem_type(path, mounts)
    if kind is not None and kind in NETWORK_FILESYSTEMS:
        warnings.warn(f"{str(path)!r} is on a network file system ({kind}): the sweep index (SQLite, WAL) is "
                      "only safe for sweep processes on one host; run every `tiltedsam sweep` on this output "
                      "from this host, or use --engine ray / --engine slurm for several machines", stacklevel=2)
        return kind
    return None
