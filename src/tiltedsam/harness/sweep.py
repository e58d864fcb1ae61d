"""Grid sweeps over optimizers x hyper-parameters x seeds, recorded in an SQLite database.

A sweep config (TOML/YAML/JSON, :class:`SweepConfig`)::

    name = "digits-grid"
    out_dir = "results/digits-grid"      # holds sweep.db and runs/<label>-<run key>/
    optimizers = ["sgd", "sam", "esam1", "tsam"]   # labels: registry names or [variants]
    seeds = [0, 1, 2]
    workers = 2                          # processes on this machine

    [base]                               # a run config (see tiltedsam.harness.config.RunConfig)
    data = {name = "digits", label_noise = 0.2}
    model = {name = "mlp"}
    budget = {kind = "epochs", amount = 20}

    [grid]                               # axes for every optimizer: key -> list of values
    lr = [0.01, 0.03]

    [per_optimizer.tsam]                 # axes for one optimizer only
    t = [0, 1, 5, 20]
    s = [3, 5]

    [variants.esam1]                     # fixed overrides that define a label
    "optimizer.name" = "sam"
    "budget.match_optimizer" = "tsam"

Axis keys are dotted config keys or the short names ``t``, ``s``, ``rho``, ``lr``, ``sampler``,
``noise_radius``. The label ``esam1`` is built in (SAM on TSAM's gradient-evaluation budget, using
the registry's ``esam1`` entry when there is one).

The database (WAL mode, safe for several worker processes) has a ``meta`` table (schema version,
package version), a ``runs`` table (one row per grid point: ``run_key`` = hash of the resolved
config, ``status`` pending/running/done/failed, the result JSON) and an ``epochs`` table (one row
per run and epoch). Restarting a sweep skips ``done`` runs and re-runs the rest, resuming each from
its run directory's checkpoint when there is one, so a crash costs at most one epoch per run.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator

from .config import ConfigError, RunConfig, apply_overrides, from_dict, read_mapping, run_key, to_dict

__all__ = ["SCHEMA_VERSION", "SweepConfig", "SweepError", "GridPoint", "expand_grid", "open_database",
           "run_sweep", "load_sweep_config", "AXIS_ALIASES", "database_path"]

SCHEMA_VERSION = 1
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
}


class SweepError(RuntimeError):
    """A sweep database is missing, of another schema version, or a sweep config is invalid."""


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

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers = {self.workers!r} is invalid; allowed: an integer >= 1")
        if not self.optimizers:
            raise ConfigError("optimizers must list at least one optimizer label")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        for where, axes in [("grid", self.grid), *((f"per_optimizer.{k}", v) for k, v in self.per_optimizer.items())]:
            if not isinstance(axes, dict):
                raise ConfigError(f"{where} must be a table of axis = [values], got {axes!r}")
            for axis, values in axes.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"{where}.{axis} must be a non-empty list of values, got {values!r}")
        for label in self.per_optimizer:
            if label not in self.optimizers:
                raise ConfigError(f"per_optimizer.{label}: {label!r} is not in optimizers {self.optimizers}")


def load_sweep_config(path: str | os.PathLike[str] | None = None, overrides: list[str] = ()) -> SweepConfig:
    data = read_mapping(path) if path is not None else {}
    return from_dict(SweepConfig, apply_overrides(data, list(overrides)))


def builtin_variant(label: str) -> dict[str, Any]:
    """Overrides that define ``label`` when the sweep config gives none."""
    from ..optim.registry import REGISTRY

    if label == "esam1":
        return {"optimizer.name": "esam1" if "esam1" in REGISTRY else "sam", "budget.match_optimizer": "tsam"}
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


def _axis_key(axis: str) -> str:
    return AXIS_ALIASES.get(axis, axis)


def expand_grid(sweep: SweepConfig) -> list[GridPoint]:
    """Every (label, setting, seed) of the sweep as a resolved, checked run config."""
    out_root = Path(sweep.out_dir)
    points: list[GridPoint] = []
    seen: set[str] = set()
    for label in sweep.optimizers:
        variant = dict(sweep.variants.get(label) or builtin_variant(label))
        axes = {_axis_key(k): v for k, v in {**sweep.grid, **(sweep.per_optimizer.get(label) or {})}.items()}
        names = list(axes)
        for values in itertools.product(*(axes[n] for n in names)):
            setting = dict(zip(names, values))
            for seed in sweep.seeds:
                overrides = {**variant, **setting, "seed": seed, "label": label}
                try:
                    config = from_dict(RunConfig, apply_overrides(sweep.base, overrides))
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


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=120, isolation_level=None)  # autocommit; explicit transactions
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA busy_timeout=120000")
    connection.row_factory = sqlite3.Row
    return connection


def open_database(path: str | os.PathLike[str], create: bool = False) -> sqlite3.Connection:
    """Open a sweep database; with ``create`` make it if missing. Raises :class:`SweepError` when it
    is missing (and not created) or was written with another schema version."""
    from .._version import __version__

    file = database_path(path)
    if not file.is_file():
        if not create:
            raise SweepError(f"no sweep database at {str(file)!r}; run `tiltedsam sweep` or `tiltedsam compare` first")
        file.parent.mkdir(parents=True, exist_ok=True)
    connection = _connect(file)
    tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "meta" not in tables:
        if not create or tables:
            connection.close()
            raise SweepError(f"{str(file)!r} is not a tiltedsam sweep database (no meta table)")
        connection.executescript(f"""
            BEGIN;
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE runs (
                run_key TEXT PRIMARY KEY, label TEXT NOT NULL, optimizer TEXT NOT NULL, seed INTEGER NOT NULL,
                setting TEXT NOT NULL, config TEXT NOT NULL, run_dir TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','running','done','failed')),
                attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, result TEXT, error TEXT);
            CREATE TABLE epochs (
                run_key TEXT NOT NULL REFERENCES runs(run_key), epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
                PRIMARY KEY (run_key, epoch));
            INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'), ('package_version', '{__version__}'),
                                    ('created', '{time.strftime("%Y-%m-%dT%H:%M:%S")}');
            COMMIT;""")
        return connection
    meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("schema_version") != str(SCHEMA_VERSION):
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
            (p.key, p.label, p.config.optimizer.name, p.seed, json.dumps(p.setting, sort_keys=True),
             json.dumps(to_dict(p.config)), p.config.run.out_dir))
    connection.execute("COMMIT")


def execute_run(db_file: str, key: str, num_threads: int = 0) -> tuple[str, str]:
    """Run one grid point (in a worker process): mark it running, train (resuming from its
    checkpoint if a crash left one), store epochs and result, mark it done or failed."""
    import torch

    from .train import train

    if num_threads:
        torch.set_num_threads(num_threads)
    connection = _connect(Path(db_file))
    try:
        row = connection.execute("SELECT config FROM runs WHERE run_key = ?", (key,)).fetchone()
        config = from_dict(RunConfig, json.loads(row["config"]))
        if num_threads and not config.run.num_threads:  # run.* is not part of the run key
            config.run.num_threads = num_threads
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE runs SET status='running', attempts=attempts+1, started=?, error=NULL "
                           "WHERE run_key=?", (time.time(), key))
        connection.execute("DELETE FROM epochs WHERE run_key=?", (key,))
        connection.execute("COMMIT")

        def store_epoch(metrics: dict[str, Any]) -> None:
            connection.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)",
                               (key, metrics["epoch"], json.dumps(metrics)))

        try:
            result = train(config, resume=True, on_epoch=store_epoch)
        except Exception:
            connection.execute("UPDATE runs SET status='failed', finished=?, error=? WHERE run_key=?",
                               (time.time(), traceback.format_exc(), key))
            return key, "failed"
        from .checkpoints import load_checkpoint

        rows = load_checkpoint(config.run.out_dir)["metrics"]
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("DELETE FROM epochs WHERE run_key=?", (key,))
        connection.executemany("INSERT INTO epochs VALUES (?, ?, ?)",
                               [(key, r["epoch"], json.dumps(r)) for r in rows])
        connection.execute("UPDATE runs SET status='done', finished=?, result=? WHERE run_key=?",
                           (time.time(), json.dumps(result), key))
        connection.execute("COMMIT")
        return key, "done"
    finally:
        connection.close()


def run_sweep(sweep: SweepConfig, *, retry_failed: bool = True, max_runs: int | None = None) -> dict[str, int]:
    """Run every grid point of ``sweep`` that is not done yet; returns counts by final status.

    ``max_runs`` stops after that many runs were started (for tests and partial runs). With
    ``workers > 1`` the runs go to a spawn-context process pool, each worker using
    ``threads_per_worker`` torch threads (default: :func:`tiltedsam._threads.choose_threads` for
    that many processes).
    """
    from tqdm.auto import tqdm

    out = Path(sweep.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(to_dict(sweep), indent=2) + "\n")
    points = expand_grid(sweep)
    connection = open_database(out, create=True)
    try:
        register_points(connection, points)
        wanted = {p.key for p in points}
        statuses = ("pending", "running", "failed") if retry_failed else ("pending", "running")
        todo = [r["run_key"] for r in connection.execute(
            f"SELECT run_key FROM runs WHERE status IN ({','.join('?' * len(statuses))}) ORDER BY rowid", statuses)
            if r["run_key"] in wanted]
    finally:
        connection.close()
    # Longest runs first (by gradient evaluations for a nominal epoch length), so that parallel
    # workers finish together instead of one of them running a long run alone at the end.
    from .train import resolve_budget

    cost = {p.key: resolve_budget(p.config, steps_per_epoch=1000).total_grad_evals for p in points}
    todo.sort(key=lambda key: -cost[key])
    if max_runs is not None:
        todo = todo[:max_runs]
    db_file = str(database_path(out).resolve())
    from .._threads import choose_threads

    workers = max(1, min(sweep.workers, len(todo)))
    threads = choose_threads(sweep.threads_per_worker or None, processes=workers).threads
    counts = {"done": 0, "failed": 0, "skipped": len(points) - len(todo)}
    # One bar over the whole sweep, advanced by each finished run's expected gradient evaluations, so
    # the ETA does not take the first (longest) runs as typical; one printed line per finished run.
    # disable=None: no bar at all when stderr is not a terminal (logs get the per-run lines only).
    bar = tqdm(total=sum(cost[key] for key in todo), desc=f"sweep {sweep.name}", unit="eval", unit_scale=True,
               disable=None if sweep.progress else True, mininterval=1.0,
               bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
    bar.set_postfix_str(f"0/{len(todo)} runs")
    total_runs = len(todo)

    def finished(key: str, status: str) -> None:
        counts[status] += 1
        bar.update(cost[key])
        done = counts["done"] + counts["failed"]
        bar.set_postfix_str(f"{done}/{total_runs} runs")
        if sweep.progress:
            line = _run_line(db_file, key, status, done, total_runs)
            (bar.write(line) if not bar.disable else print(line, flush=True))

    if workers == 1:
        for key in todo:
            finished(*execute_run(db_file, key, threads))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            pending = {pool.submit(execute_run, db_file, key, threads) for key in todo}
            while pending:
                done_now, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done_now:
                    finished(*future.result())
    bar.close()
    return counts


def _run_line(db_file: str, key: str, status: str, done: int, total: int) -> str:
    """``[3/8] tsam seed 1: final test acc 92.10%, best-val epoch 9 94.00%, 3960 grad evals, 130.2 s``."""
    connection = _connect(Path(db_file))
    try:
        row = connection.execute("SELECT label, seed, result, error FROM runs WHERE run_key=?", (key,)).fetchone()
    finally:
        connection.close()
    head = f"[{done}/{total}] {row['label']} seed {row['seed']}"
    if status != "done" or not row["result"]:
        last = (row["error"] or "").strip().splitlines()[-1:] or ["?"]
        return f"{head}: FAILED ({last[0]})"
    r = json.loads(row["result"])
    return (f"{head}: final test acc {100 * r['final_test_acc']:.2f}%, best-val epoch {r['best_val_epoch']} "
            f"{100 * r['best_val_test_acc']:.2f}%, {r['grad_evals']} grad evals, {r['train_seconds']:.1f} s, "
            f"{r.get('threads', '?')} thread(s)")


def iter_results(connection: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """Finished runs: label, optimizer, seed, setting, config and result as Python objects."""
    for r in connection.execute("SELECT * FROM runs WHERE status='done' ORDER BY rowid"):
        yield {"run_key": r["run_key"], "label": r["label"], "optimizer": r["optimizer"], "seed": r["seed"],
               "setting": json.loads(r["setting"]), "config": json.loads(r["config"]),
               "result": json.loads(r["result"]), "run_dir": r["run_dir"]}
