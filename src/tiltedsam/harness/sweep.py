"""Grid sweeps over optimizers x hyper-parameters x seeds, indexed in an SQLite database.

A sweep config (:class:`SweepConfig`; keys in docs/harness.md) names optimizer labels (registry
names or ``[variants]``), seeds, a ``base`` run config and axes (``grid``, ``per_optimizer``; short
names in :data:`AXIS_ALIASES`); :func:`expand_grid` checks every point before anything is written.
The WAL database is an index: ``meta`` and ``runs`` (run key, run directory, status, lease owner,
heartbeat, error); epochs and results live in the run directories (:mod:`.rundir`). Schema-2
databases (which also copied results and epochs) are read and run as they are.

A run is claimed in one ``BEGIN IMMEDIATE`` transaction (owner host:pid:nonce), so one process
trains it even with several sweeps on one database (on one host and a local disk; clusters use
:mod:`.engines`). A lease without a heartbeat (every ``lease_seconds / 4``) for ``lease_seconds``,
or of a dead owner, may be claimed again (resuming). SIGINT/SIGTERM stop the workers, mark the runs
in flight ``interrupted`` and raise :class:`SweepInterrupted` (exit 130/143); workers die with
their parent, even on ``kill -9``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import _json, _limits, _warning_lines
from .._atomic import atomic_write
from .._version import __version__
from .config import (MAX_SEED, ConfigError, RunConfig, _nonfinite_from_strings, apply_overrides, check_name,
                     from_dict, read_mapping, run_key, to_dict)
from .report_input import failed_runs_checked
from .rundir import read_result
from .runlock import RunDirectoryBusy, RunDirectoryLock, read_owner
from .sweep_safety import creation_lock, sqlite_uri

__all__ = ["SCHEMA_VERSION", "SweepConfig", "SweepError", "SweepInterrupted", "GridPoint", "expand_grid",
           "open_database", "run_sweep", "load_sweep_config", "AXIS_ALIASES", "database_path", "claim_run",
           "STATUSES", "failed_runs"]

SCHEMA_VERSION = 3
#: older schemas this version reads and runs without migrating (2: results and epochs also in the database)
READABLE_SCHEMAS = ("2", "3")
STATUSES = ("pending", "running", "done", "failed", "interrupted")
DATABASE_NAME = "sweep.db"

#: short axis names -> dotted config keys
AXIS_ALIASES = {
    "t": "optimizer.settings.tilt",
    "tilt": "optimizer.settings.tilt",
    "s": "optimizer.settings.num_samples",
    "num_samples": "optimizer.settings.num_samples",
    "rho": "optimizer.settings.rho",
    "sampler": "optimizer.settings.sampler",
    "noise_radius": "optimizer.settings.noise_radius",
    "tilt_schedule": "optimizer.tilt_schedule",
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "task": "data.options.task",  # a GLUE task
    "sample_tilt": "optimizer.settings.sample_tilt",
}


class SweepError(RuntimeError):
    """A sweep database is missing, of another schema version, or a sweep config is invalid."""


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by SIGINT/SIGTERM (or Ctrl-C); ``exit_code`` = 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT, interrupted: int = 0) -> None:
        self.signum = int(signum)
        self.interrupted = interrupted
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        super().__init__(f"sweep stopped by {name}: {interrupted} run(s) in flight marked interrupted; "
                         "run the same command again to resume")


@dataclass
class SweepConfig:
    name: str = "sweep"
    out_dir: str = "results/sweep"
    optimizers: list[str] = field(default_factory=lambda: ["sgd", "sam", "tsam"])
    seeds: list[int] = field(default_factory=lambda: [0])
    workers: int = 1
    threads_per_worker: int = 0  # 0: the shared policy (tiltedsam._threads: cores / workers, minus busy cores)
    progress: bool = True
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)
    per_optimizer: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)
    lease_seconds: float = 60.0  # a run whose claimer sent no heartbeat for this long may be claimed again
    # cluster engines (harness/engines): resources of one run, retries of a run whose process or node died
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        check_name("name", self.name)
        if self.workers < 1:
            raise ConfigError(f"workers = {self.workers!r} is invalid; allowed: an integer >= 1")
        _check_sweep_limits(self)
        if self.threads_per_worker < 0:
            raise ConfigError(f"threads_per_worker = {self.threads_per_worker!r} is invalid; allowed: 0 (cores / "
                              "workers) or a positive count")
        if not (math.isfinite(self.lease_seconds) and self.lease_seconds > 0):
            raise ConfigError(f"lease_seconds = {self.lease_seconds!r} is invalid; allowed: a finite number > 0")
        if not self.optimizers:
            raise ConfigError("optimizers must list at least one optimizer label")
        for index, label in enumerate(self.optimizers):
            check_name(f"optimizers[{index}]", label)
        for label in self.variants:
            check_name(f"variants.{label}", label)
            if not isinstance(self.variants[label], dict):
                raise ConfigError(f"variants.{label} must be a table of key = value overrides, "
                                  f"got {self.variants[label]!r}")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        for seed in self.seeds:
            if not 0 <= seed <= MAX_SEED:
                raise ConfigError(f"seeds: {seed!r} is invalid; allowed: integers from 0 to 2**32 - 1 = {MAX_SEED}")
        for where, axes in [("grid", self.grid), *((f"per_optimizer.{k}", v) for k, v in self.per_optimizer.items())]:
            if not isinstance(axes, dict):
                raise ConfigError(f"{where} must be a table of axis = [values], got {axes!r}")
            for axis, values in axes.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{where}.{axis} must be a non-empty list of values, got {values!r}")
        for label in self.per_optimizer:
            if label not in self.optimizers:
                raise ConfigError(f"per_optimizer.{label}: {label!r} is not in optimizers {self.optimizers}")


def _check_sweep_limits(sweep: "SweepConfig") -> None:
    """Workers, threads per worker, seeds and grid points under :mod:`tiltedsam._limits` (before any expansion)."""
    try:
        _limits.check_workers("workers", sweep.workers)
        if sweep.threads_per_worker > 0:
            _limits.check_threads("threads_per_worker", sweep.threads_per_worker)
        if isinstance(sweep.seeds, list):
            _limits.check_seed_count("seeds", len(sweep.seeds))
        points = len(sweep.seeds) if isinstance(sweep.seeds, list) else 1
        total = 0
        for label in sweep.optimizers or []:
            axes = {**(sweep.grid if isinstance(sweep.grid, dict) else {}),
                    **((sweep.per_optimizer or {}).get(label) or {} if isinstance(sweep.per_optimizer, dict) else {})}
            total += points * math.prod(len(v) if isinstance(v, list) else 1 for v in axes.values())
        _limits.check_grid_points("the sweep grid (optimizers x axis values x seeds)", total)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_sweep_config(path: str | os.PathLike[str] | None = None, overrides: list[str] = ()) -> SweepConfig:
    data = read_mapping(path) if path is not None else {}
    return from_dict(SweepConfig, apply_overrides(data, list(overrides)))


def builtin_variant(label: str) -> dict[str, Any]:
    """Overrides that define ``label`` when the sweep config gives none."""
    from ..optim.registry import REGISTRY

    if label in REGISTRY:
        return {"optimizer.name": label}
    raise ConfigError(f"optimizer label {label!r} is neither a registered optimizer ({sorted(REGISTRY)}) nor "
                      "defined under [variants]")


@dataclass
class GridPoint:
    label: str
    seed: int
    setting: dict[str, Any]  # the axis values (aliases resolved), without the seed
    config: RunConfig

    @property
    def key(self) -> str:
        return run_key(self.config)


def expand_grid(sweep: SweepConfig, check: bool = True) -> list[GridPoint]:
    """Every (label, setting, seed) of the sweep as a resolved run config; with ``check`` each is also
    checked without data (:func:`tiltedsam.harness.train.check_run`) before anything is written."""
    from .train import check_run

    _check_sweep_limits(sweep)  # again: the Python API may have changed the fields after construction
    out_root = Path(sweep.out_dir)
    points: list[GridPoint] = []
    seen: set[str] = set()
    for label in sweep.optimizers:
        variant = dict(sweep.variants.get(label) or builtin_variant(label))
        axes = {AXIS_ALIASES.get(k, k): v for k, v in {**sweep.grid, **(sweep.per_optimizer.get(label) or {})}.items()}
        names = list(axes)
        for values in itertools.product(*(axes[n] for n in names)):
            setting = dict(zip(names, values))
            for seed in sweep.seeds:
                overrides = {**variant, **setting, "seed": seed, "label": label}
                try:
                    config = from_dict(RunConfig, apply_overrides(sweep.base, overrides))
                    if check:
                        check_run(config)
                except ConfigError as exc:
                    raise ConfigError(f"sweep point {label} {setting} seed {seed}: {exc}") from exc
                key = run_key(config)
                config.run.out_dir = str(out_root / "runs" / f"{label}-{key}")
                config.run.progress = sweep.progress and sweep.workers == 1
                if key in seen:
                    continue
                seen.add(key)
                points.append(GridPoint(label, seed, setting, config))
    return points


# ---------------------------------------------------------------------- database
def database_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file (or ends in .db), else ``path/sweep.db``."""
    path = Path(path)
    return path if path.suffix == ".db" or path.is_file() else path / DATABASE_NAME


_RUNS_TABLE = """
    CREATE TABLE runs (
        run_key TEXT PRIMARY KEY, label TEXT NOT NULL, optimizer TEXT NOT NULL, seed INTEGER NOT NULL,
        setting TEXT NOT NULL, config TEXT NOT NULL, run_dir TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending','running','done','failed','interrupted')),
        attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, error TEXT,
        owner TEXT, heartbeat REAL)"""
#: schema 2's runs table also held each run's result JSON
_RUNS_TABLE_V2 = _RUNS_TABLE.replace("error TEXT,", "result TEXT, error TEXT,")
_RUN_COLUMNS_V1 = "run_key, label, optimizer, seed, setting, config, run_dir, status, attempts, started, finished, " \
                  "result, error"


def _connect(path: Path, mode: str = "rw") -> sqlite3.Connection:
    """Open ``path`` (``mode`` ``rw``, ``rwc`` to create, ``ro``: ``immutable`` in a folder this process
    cannot write). A database that vanished is an error, never recreated as an empty stub."""
    try:
        connection = sqlite3.connect(sqlite_uri(path, mode), timeout=120, isolation_level=None, uri=True)
    except sqlite3.OperationalError as exc:  # autocommit above; explicit transactions
        raise SweepError(f"cannot open the sweep database {str(path)!r} ({exc}); was its directory deleted "
                         "or made unreadable?") from None
    try:
        connection.execute("PRAGMA busy_timeout=120000")
        if mode != "ro":
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise SweepError(f"{str(path)!r} is not an SQLite database ({exc}); expected a tiltedsam sweep.db") from None
    connection.row_factory = sqlite3.Row
    return connection


def _migrate_v1(connection: sqlite3.Connection) -> None:
    """Schema 1 -> 2 (``interrupted`` status, lease columns): new table, copy, drop, rename, in one
    transaction (SQLite cannot change a CHECK constraint in place)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(_RUNS_TABLE_V2.replace("CREATE TABLE runs", "CREATE TABLE runs_v2"))
        connection.execute(f"INSERT INTO runs_v2 ({_RUN_COLUMNS_V1}) SELECT {_RUN_COLUMNS_V1} FROM runs")
        connection.execute("DROP TABLE runs")
        connection.execute("ALTER TABLE runs_v2 RENAME TO runs")
        connection.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def open_database(path: str | os.PathLike[str], create: bool = False, read_only: bool = False) -> sqlite3.Connection:
    """Open a sweep database (``create`` it if missing; ``read_only`` for reports). Raises
    :class:`SweepError` when it is missing or of another schema version. Creating and migrating hold
    an OS lock on ``sweep.db.lock``, so two sweeps starting together create the tables once."""
    file = database_path(path)
    if read_only:
        return _open_database(file, create=False, read_only=True)
    if create and not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True)
    with creation_lock(file):
        return _open_database(file, create, read_only=False)


def _open_database(file: Path, create: bool, read_only: bool) -> sqlite3.Connection:
    if not file.is_file():
        if not create:
            raise SweepError(f"no sweep database at {str(file)!r}; run `tiltedsam sweep` or `tiltedsam compare` first")
        file.parent.mkdir(parents=True, exist_ok=True)
    if file.is_file():  # never let SQLite turn someone's text file into a database
        with open(file, "rb") as stream:
            header = stream.read(16)
        if header != b"SQLite format 3\x00" and not (create and file.stat().st_size == 0):
            raise SweepError(f"{str(file)!r} is not an SQLite database (no SQLite header); expected a tiltedsam "
                             "sweep.db")
    connection = _connect(file, "ro" if read_only else ("rwc" if create else "rw"))
    try:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        connection.close()
        raise SweepError(f"{str(file)!r} is not an SQLite database ({exc}); expected a tiltedsam sweep.db") from None
    if "meta" not in tables:
        if not create or tables:
            connection.close()
            raise SweepError(f"{str(file)!r} is not a tiltedsam sweep database (no meta table)")
        connection.executescript(f"""
            BEGIN;
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            {_RUNS_TABLE};
            INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('package_version', '{__version__}'),
                                    ('created', '{time.strftime("%Y-%m-%dT%H:%M:%S")}');
            COMMIT;""")
        return connection
    meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("schema_version") == "1" and not read_only:
        _migrate_v1(connection)
        meta["schema_version"] = "2"
    if meta.get("schema_version") not in READABLE_SCHEMAS:
        connection.close()
        raise SweepError(f"{str(file)!r} has sweep schema version {meta.get('schema_version')!r} (written by "
                         f"tiltedsam {meta.get('package_version', '?')}); this is tiltedsam {__version__} with "
                         f"schema version {SCHEMA_VERSION}: use a new --out directory")
    return connection


def register_points(connection: sqlite3.Connection, points: list[GridPoint]) -> None:
    """Insert grid points not yet in the database as 'pending' (existing rows are kept)."""
    connection.execute("BEGIN IMMEDIATE")
    for p in points:
        connection.execute(
            "INSERT OR IGNORE INTO runs (run_key, label, optimizer, seed, setting, config, run_dir) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (p.key, p.label, p.config.optimizer.name, p.seed, _json.dumps(p.setting, nonfinite="string", sort_keys=True),
             _json.dumps(to_dict(p.config), nonfinite="string"), p.config.run.out_dir))
    connection.execute("COMMIT")


# ---------------------------------------------------------------------- leases
def _owner_id() -> str:
    """``host:pid:nonce``: who holds a lease (the nonce tells two lives of one pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` names a process of this host that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine: unknown, never dead; only the heartbeat can tell
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def claim_run(connection: sqlite3.Connection, owner: str, candidates: list[str], *, since: float,
              retry_failed: bool = True, lease_seconds: float = 60.0) -> str | None:
    """Claim the first claimable run of ``candidates`` for ``owner``; its key, or ``None``.

    Claimable: ``pending``, ``interrupted``, ``failed`` before ``since`` (with ``retry_failed``), or
    ``running`` under a stale lease (no heartbeat for ``lease_seconds``, or a dead owner on this
    host). Check and claim share one ``BEGIN IMMEDIATE`` transaction: no two processes claim one run.
    """
    now = time.time()
    connection.execute("BEGIN IMMEDIATE")
    try:
        rows = {r["run_key"]: r for r in connection.execute(
            "SELECT run_key, status, owner, heartbeat, finished FROM runs WHERE status != 'done'")}
        chosen = None
        for key in candidates:
            row = rows.get(key)
            if row is None:
                continue
            status = row["status"]
            if status in ("pending", "interrupted"):
                chosen = key
            elif status == "failed" and retry_failed and (row["finished"] or 0) < since:
                chosen = key
            elif status == "running" and row["owner"] != owner and (
                    row["heartbeat"] is None or now - row["heartbeat"] > lease_seconds
                    or _owner_is_dead(row["owner"])):
                chosen = key
            if chosen is not None:
                break
        if chosen is not None:
            connection.execute("UPDATE runs SET status='running', owner=?, heartbeat=?, started=?, "
                               "attempts=attempts+1, error=NULL WHERE run_key=?", (owner, now, now, chosen))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # a signal may arrive before BEGIN or after COMMIT: keep the signal's error
            connection.execute("ROLLBACK")
        raise
    return chosen


class _Heartbeat(threading.Thread):
    """Refreshes the heartbeat of every run ``owner`` holds, every ``interval`` seconds."""

    def __init__(self, db_file: str, owner: str, interval: float) -> None:
        super().__init__(name="sweep-heartbeat", daemon=True)
        self.db_file, self.owner, self.interval = db_file, owner, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        connection = _connect(Path(self.db_file))
        try:
            while not self.stopped.wait(self.interval):
                try:
                    connection.execute("UPDATE runs SET heartbeat=? WHERE owner=? AND status='running'",
                                       (time.time(), self.owner))
                except sqlite3.Error:  # busy beyond the timeout: try again next beat
                    continue
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def _mark_interrupted(db_file: str, owner: str) -> int:
    """Runs ``owner`` holds that are still ``running`` -> ``interrupted``; returns how many."""
    connection = _connect(Path(db_file))
    try:
        cursor = connection.execute(
            "UPDATE runs SET status='interrupted', finished=?, error='interrupted by a signal; rerun to resume' "
            "WHERE owner=? AND status='running'", (time.time(), owner))
        return cursor.rowcount
    finally:
        connection.close()


def _error_text(exc: BaseException) -> str:
    """One line for the expected failures (divergence, bad config, bad checkpoint), else the traceback."""
    from .checkpoints import CheckpointError
    from .train import RunDiverged

    if isinstance(exc, (RunDiverged, ConfigError, CheckpointError)):
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return traceback.format_exc()


def _hold_run(connection: sqlite3.Connection, key: str, run_dir: str, owner: str) -> RunDirectoryLock:
    """Take the run directory's OS lock (the authority: a lease can look stale while its owner lives).
    When another process holds it, the row goes back to that holder and :class:`RunDirectoryBusy` is raised."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    lock = RunDirectoryLock(run_dir, owner=owner)
    try:
        return lock.acquire()
    except RunDirectoryBusy:
        holder = read_owner(run_dir)
        if holder.count(":") == 2:  # a sweep owner id: host:pid:nonce
            connection.execute("UPDATE runs SET status='running', owner=?, heartbeat=? WHERE run_key=? AND owner=?",
                               (holder, time.time(), key, owner))
        raise


def execute_run(db_file: str, key: str, num_threads: int = 0, owner: str | None = None,
                device: str | None = None) -> tuple[str, str]:
    """Train one grid point (resuming from its checkpoint) and mark it done or failed. Without ``owner``
    (the lease holder) the run is claimed here first; ``device`` replaces the config's ``run.device``."""
    import torch

    from .train import train

    if num_threads:
        torch.set_num_threads(num_threads)
    connection = _connect(Path(db_file))
    lock = None
    try:
        if owner is None:
            owner = _owner_id()
            now = time.time()
            connection.execute("UPDATE runs SET status='running', owner=?, heartbeat=?, started=?, "
                               "attempts=attempts+1, error=NULL WHERE run_key=?", (owner, now, now, key))
        row = connection.execute("SELECT config FROM runs WHERE run_key = ?", (key,)).fetchone()
        config = from_dict(RunConfig, json.loads(row["config"]))
        if num_threads and not config.run.num_threads:  # run.* is not part of the run key
            config.run.num_threads = num_threads
        if device:
            config.run.device = device
        try:
            lock = _hold_run(connection, key, config.run.out_dir, owner)
        except RunDirectoryBusy:
            return key, "elsewhere"  # its live owner keeps it (a stale-looking lease, e.g. a stopped process)
        try:
            train(config, resume=True)
        except Exception as exc:
            connection.execute("UPDATE runs SET status='failed', finished=?, error=?, owner=? WHERE run_key=?",
                               (time.time(), _error_text(exc), owner, key))
            return key, "failed"
        connection.execute("UPDATE runs SET status='done', finished=?, owner=? WHERE run_key=?",
                           (time.time(), owner, key))
        return key, "done"
    finally:
        if lock is not None:
            lock.release()
        connection.close()


# ---------------------------------------------------------------------- worker processes
def _die_with_parent(parent_pid: int) -> None:
    """Exit when the sweep process dies, even by ``kill -9``: ``prctl(PR_SET_PDEATHSIG)`` on Linux, and
    everywhere a daemon thread that polls ``os.getppid()``."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the poll below still works
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def poll() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


def _worker_main(connection: Any, db_file: str, num_threads: int, owner: str, parent_pid: int,
                 device: str | None = None) -> None:
    """Run the keys the parent sends until ``None``. SIGINT is ignored: the parent decides, and stops
    the workers with SIGTERM (which ends them without a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    _quiet_worker()
    connection.send("ready")  # only now may the parent claim a run for this worker
    while True:
        try:
            key = connection.recv()
        except (EOFError, OSError):
            return
        if key is None:
            return
        connection.send(execute_run(db_file, key, num_threads, owner, device))


def _quiet_worker() -> None:
    """Warnings as one ``warning: ...`` line each, and a thread lock for tqdm instead of a
    ``multiprocessing`` semaphore, which a worker stopped by SIGTERM would leak."""
    _warning_lines.install()
    try:
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())
    except ImportError:  # pragma: no cover - tqdm is a harness dependency
        pass


@dataclass
class _Worker:
    process: Any
    connection: Any
    key: str | None = None
    ready: bool = False  # set once it has imported the harness and arranged to die with the parent
    device: str | None = None  # the device this worker trains on (None: the run's config decides)


def _start_worker(context: Any, db_file: str, threads: int, owner: str, device: str | None = None) -> _Worker:
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_worker_main, args=(child_end, db_file, threads, owner, os.getpid(), device),
                              daemon=True, name="tiltedsam-sweep-worker")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _in_main_thread() else None
    try:
        process.start()  # inherits SIG_IGN for SIGINT: a Ctrl-C while it imports gives no traceback
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    child_end.close()
    return _Worker(process, parent_end, device=device)


def _stop_workers(workers: list[_Worker], grace: float = 3.0) -> None:
    """SIGTERM every live worker, wait up to ``grace`` seconds, SIGKILL what is left."""
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(timeout=5)
        worker.connection.close()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise SweepInterrupted(signum)


def _catch_signals() -> dict[int, Any]:
    """SIGINT/SIGTERM raise :class:`SweepInterrupted` (main thread only); returns the previous handlers."""
    if not _in_main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(handlers: dict[int, Any]) -> None:
    for signum, previous in handlers.items():
        signal.signal(signum, previous)


def _interrupted(exc: KeyboardInterrupt, handlers: dict[int, Any], db_file: str, owner: str,
                 *cleanups: Callable[[], Any]) -> SweepInterrupted:
    """Clean up after a SIGINT/SIGTERM or Ctrl-C: ignore further signals, run ``cleanups``, mark the
    runs ``owner`` holds ``interrupted``; returns the :class:`SweepInterrupted` to raise."""
    for signum in handlers:  # a second signal must not interrupt the clean-up
        signal.signal(signum, signal.SIG_IGN)
    for cleanup in cleanups:
        cleanup()
    interrupted = _mark_interrupted(db_file, owner)
    return SweepInterrupted(exc.signum if isinstance(exc, SweepInterrupted) else signal.SIGINT, interrupted)


# ---------------------------------------------------------------------- the sweep
@dataclass
class _Plan:
    """The claimable keys (longest first), their cost in gradient evaluations, how many runs to start,
    torch threads per run, and the runs' ``run.device`` (spread over the workers)."""

    db_file: str
    todo: list[str]
    cost: dict[str, float]
    budget: int
    threads: int
    skipped: int
    since: float
    device: str = "cpu"


def _plan(sweep: SweepConfig, points: list[GridPoint], retry_failed: bool, max_runs: int | None) -> _Plan:
    """Write sweep.json, register the grid points in the database and choose the runs to do."""
    from .._threads import choose_threads
    from .train import resolve_budget

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
    # Longest runs first (by gradient evaluations for a nominal epoch length), so that parallel
    # workers finish together instead of one of them running a long run alone at the end.
    cost = {p.key: resolve_budget(p.config, steps_per_epoch=1000).total_grad_evals for p in points}
    todo.sort(key=lambda key: -cost[key])
    budget = len(todo) if max_runs is None else min(max_runs, len(todo))
    threads = choose_threads(sweep.threads_per_worker or None, processes=max(1, min(sweep.workers, budget))).threads
    device = points[0].config.run.device if points else "cpu"
    return _Plan(str(database_path(out).resolve()), todo, cost, budget, threads, len(points) - len(todo), since,
                 device)


class _Progress:
    """One bar over the sweep, advanced by each finished run's expected gradient evaluations (a fair
    ETA), and one line per finished run; no bar when stderr is not a terminal."""

    def __init__(self, sweep: SweepConfig, plan: _Plan) -> None:
        from tqdm.auto import tqdm

        self.sweep, self.plan = sweep, plan
        self.counts = {"done": 0, "failed": 0, "skipped": plan.skipped, "elsewhere": 0}
        self.bar = tqdm(total=sum(sorted((plan.cost[key] for key in plan.todo), reverse=True)[:plan.budget]),
                        desc=f"sweep {sweep.name}", unit="eval", unit_scale=True,
                        disable=None if sweep.progress else True, mininterval=1.0,
                        bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
        self.bar.set_postfix_str(f"0/{plan.budget} runs")

    def finished(self, key: str, status: str) -> None:
        self.counts[status] += 1
        self.bar.update(self.plan.cost[key])
        done = self.counts["done"] + self.counts["failed"]
        self.bar.set_postfix_str(f"{done}/{self.plan.budget} runs")
        if self.sweep.progress:
            line = _run_line(self.plan.db_file, key, status, done, self.plan.budget)
            (self.bar.write(line) if not self.bar.disable else print(line, flush=True))


def run_sweep(sweep: SweepConfig, *, retry_failed: bool = True, max_runs: int | None = None) -> dict[str, int]:
    """Run every grid point of ``sweep`` not done yet; returns counts ``done``, ``failed`` (trained
    here), ``skipped`` (done before) and ``elsewhere`` (left to another process on the database).

    The sweep is checked (:func:`expand_grid`) before anything is written; ``max_runs`` stops after
    that many runs started. ``workers > 1`` spawns that many processes with ``threads_per_worker``
    threads each (default :func:`tiltedsam._threads.choose_threads`). SIGINT/SIGTERM raise
    :class:`SweepInterrupted` once the workers stopped and the runs in flight are ``interrupted``.
    """
    points = expand_grid(sweep)  # checks the whole sweep before anything is written
    from .filesystems import warn_if_network_filesystem

    warn_if_network_filesystem(sweep.out_dir)  # SQLite's WAL needs one host: clusters use --engine ray/slurm
    plan = _plan(sweep, points, retry_failed, max_runs)
    progress = _Progress(sweep, plan)
    owner = _owner_id()
    heartbeat = _Heartbeat(plan.db_file, owner, interval=max(0.2, sweep.lease_seconds / 4))
    heartbeat.start()
    handlers = _catch_signals()
    workers: list[_Worker] = []
    connection = None
    try:
        connection = _connect(Path(plan.db_file))
        claims = 0

        def claim() -> str | None:
            nonlocal claims
            if claims >= plan.budget:
                return None
            key = claim_run(connection, owner, plan.todo, since=plan.since, retry_failed=retry_failed,
                            lease_seconds=sweep.lease_seconds)
            claims += key is not None
            return key

        if sweep.workers == 1 or plan.budget <= 1:
            while (key := claim()) is not None:
                progress.finished(*execute_run(plan.db_file, key, plan.threads, owner))
        else:
            _run_on_workers(sweep, plan, owner, claim, progress, workers, connection)
    except KeyboardInterrupt as exc:  # SweepInterrupted (SIGINT/SIGTERM) or a plain Ctrl-C
        raise _interrupted(exc, handlers, plan.db_file, owner, lambda: _stop_workers(workers),
                           heartbeat.stop) from None
    finally:
        _stop_workers(workers, grace=1.0)
        heartbeat.stop()
        if connection is not None:
            connection.close()
        _restore_signals(handlers)
        progress.bar.close()
    counts = progress.counts
    counts["elsewhere"] = max(0, len(plan.todo) - counts["done"] - counts["failed"]) if max_runs is None else 0
    return counts


def _run_on_workers(sweep: SweepConfig, plan: _Plan, owner: str, claim: Callable[[], str | None],
                    progress: _Progress, workers: list[_Worker], connection: sqlite3.Connection) -> None:
    """Hand claimed runs to ``sweep.workers`` spawned processes (one GPU each where there are several)
    until nothing is left; a worker that dies fails its run and is replaced while runs remain."""
    from .engines.local import worker_devices

    context = get_context("spawn")
    workers += [_start_worker(context, plan.db_file, plan.threads, owner, device)
                for device in worker_devices(plan.device, min(sweep.workers, plan.budget))]
    idle: list[_Worker] = []
    exhausted = False  # nothing was left to claim when a worker was free
    while True:
        while idle and not exhausted:
            key = claim()
            if key is None:
                exhausted = True
                break
            worker = idle.pop()
            worker.key = key
            worker.connection.send(key)
        busy = [w for w in workers if w.key is not None]
        starting = [w for w in workers if not w.ready]
        if not busy and (exhausted or not starting):
            break
        watched = busy + starting
        ready = set(wait_for([w.connection for w in watched] + [w.process.sentinel for w in watched], timeout=5))
        for worker in watched:
            if worker.connection not in ready and worker.process.sentinel not in ready:
                continue
            try:
                message = worker.connection.recv()
            except (EOFError, OSError):  # the worker died (killed, out of memory)
                worker.process.join(timeout=5)
                workers.remove(worker)
                worker.connection.close()
                if worker.key is None:
                    raise SweepError(f"a sweep worker process failed to start (exit code "
                                     f"{worker.process.exitcode}); see its output above") from None
                connection.execute("UPDATE runs SET status='failed', finished=?, error=? WHERE run_key=? AND owner=?",
                                   (time.time(), f"the worker process died (exit code {worker.process.exitcode})",
                                    worker.key, owner))
                progress.finished(worker.key, "failed")
                if not exhausted:
                    workers.append(_start_worker(context, plan.db_file, plan.threads, owner, worker.device))
                continue
            if message == "ready":
                worker.ready = True
            else:
                progress.finished(*message)
            worker.key = None
            idle.append(worker)
    for worker in workers:
        worker.connection.send(None)
    for worker in workers:
        worker.process.join(timeout=10)


def _run_line(db_file: str, key: str, status: str, done: int, total: int) -> str:
    """``[3/8] tsam seed 1: final test acc 92.10%, best-val epoch 9 94.00%, 3960 grad evals, 130.2 s``."""
    connection = _connect(Path(db_file))
    try:
        row = connection.execute("SELECT label, seed, run_dir, error FROM runs WHERE run_key=?", (key,)).fetchone()
    finally:
        connection.close()
    head = f"[{done}/{total}] {row['label']} seed {row['seed']}"
    if status == "elsewhere":
        return f"{head}: left to the live process that holds its run directory"
    try:
        r = _run_result(row) if status == "done" else None
    except (OSError, ValueError) as exc:  # result.json changed under the sweep: one line, not a traceback
        return f"{head}: done, but its result cannot be read ({' '.join(str(exc).split())})"
    if r is None:
        last = (row["error"] or "").strip().splitlines()[-1:] or ["?"]
        return f"{head}: FAILED ({last[0]})"
    return (f"{head}: final test acc {100 * r['final_test_acc']:.2f}%, best-val epoch {r['best_val_epoch']} "
            f"{100 * r['best_val_test_acc']:.2f}%, {r['grad_evals']} grad evals, {r['train_seconds']:.1f} s, "
            f"{r.get('threads', '?')} thread(s)")


def failed_runs(connection: sqlite3.Connection, only_keys: set[str] | None = None) -> list[dict[str, Any]]:
    """Runs that failed or were interrupted: label, seed, setting, status and the error's last line."""
    return failed_runs_checked(connection, only_keys)


def _run_result(row: sqlite3.Row) -> dict[str, Any] | None:
    """The run's ``result.json``, else a schema-2 database's copy, else None."""
    if (Path(row["run_dir"]) / "result.json").is_file():
        return read_result(row["run_dir"])
    legacy = row["result"] if "result" in row.keys() else None
    return json.loads(legacy) if legacy else None


def iter_results(connection: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Finished runs: label, optimizer, seed, setting, config, run_dir and result, decoded."""
    for r in connection.execute("SELECT * FROM runs WHERE status='done' ORDER BY rowid"):
        result = _run_result(r)
        if result is None:  # its run directory was removed: nothing left to report
            continue
        yield {"run_key": r["run_key"], "label": r["label"], "optimizer": r["optimizer"], "seed": r["seed"],
               "setting": _nonfinite_from_strings(json.loads(r["setting"])),
               "config": _nonfinite_from_strings(json.loads(r["config"])),
               "result": result, "run_dir": r["run_dir"]}
