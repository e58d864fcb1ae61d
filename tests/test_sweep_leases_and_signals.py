"""Sweep processes: SIGTERM, kill -9 and Ctrl-C leave no worker behind and a rerun resumes; two
sweep processes on one database split the grid; claims are exclusive and stale leases are
reclaimed; a schema-1 database is migrated and its crashed run reclaimed. The process tests start
the real ``tiltedsam`` command."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cli_support import ENV
from tiltedsam.harness.sweep import SweepConfig, claim_run, open_database, run_sweep


def sweep_file(tmp_path: Path, runs: int, steps: int, workers: int, name: str = "sig") -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(f"""
name = "{name}"
out_dir = {json.dumps(str(tmp_path / "out"))}
optimizers = ["sgd"]
seeds = {list(range(runs))}
workers = {workers}
threads_per_worker = 1
progress = false
lease_seconds = 30
[base]
data = {{name = "digits", limit = 400}}
model = {{name = "mlp"}}
budget = {{kind = "steps", amount = {steps}}}
run = {{num_threads = 1, progress = false}}
""")
    return config


def start_sweep(config: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiltedsam", "sweep", str(config), "--no-report"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found.update(int(x) for x in text.split())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (only its parent's wait is missing)


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def statuses(db: Path) -> Counter:
    connection = sqlite3.connect(db, timeout=60)
    try:
        return Counter(s for (s,) in connection.execute("SELECT status FROM runs"))
    except sqlite3.OperationalError:  # not created yet
        return Counter()
    finally:
        connection.close()


def two_running(db: Path) -> bool:
    return db.exists() and statuses(db)["running"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "kill -9"])
def test_killed_sweep_leaves_no_worker_and_a_rerun_resumes(tmp_path, how):
    config = sweep_file(tmp_path, runs=4, steps=400, workers=2)
    db = tmp_path / "out" / "sweep.db"
    sweep = start_sweep(config)
    try:
        assert wait_until(lambda: two_running(db), timeout=120), sweep.stderr
        workers = {pid for pid in children(sweep.pid) if "tiltedsam" in Path(f"/proc/{pid}/cmdline").read_text()
                   or "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text()}
        assert len(workers) >= 2
        sent = time.monotonic()
        sweep.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        code = sweep.wait(timeout=30)
        assert wait_until(lambda: not any(alive(p) for p in workers), timeout=10), "a worker outlived the sweep"
        elapsed = time.monotonic() - sent
        stderr = sweep.stderr.read()
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert elapsed < 10
    if how == "SIGTERM":
        assert code == 143 and "Traceback" not in stderr and "interrupted" in stderr
        assert statuses(db)["interrupted"] == 2 and statuses(db)["running"] == 0
    else:
        assert code == -signal.SIGKILL and statuses(db)["running"] == 2  # nobody could mark them
    started_after = statuses(db)
    assert started_after["done"] + started_after["running"] + started_after["interrupted"] <= 4
    rerun = start_sweep(config)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert statuses(db) == {"done": 4}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_to_the_process_group_stops_the_sweep_without_traceback(tmp_path):
    config = sweep_file(tmp_path, runs=6, steps=400, workers=2)
    db = tmp_path / "out" / "sweep.db"
    sweep = start_sweep(config, start_new_session=True)  # its own process group, like a terminal's job
    try:
        assert wait_until(lambda: two_running(db), timeout=120)
        workers = children(sweep.pid)
        os.killpg(sweep.pid, signal.SIGINT)
        sent = time.monotonic()
        code = sweep.wait(timeout=30)
        elapsed = time.monotonic() - sent
        assert wait_until(lambda: not any(alive(p) for p in workers), timeout=10)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    stderr = sweep.stderr.read()
    assert code == 130 and elapsed < 10 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    counts = statuses(db)
    assert counts["running"] == 0 and counts["interrupted"] == 2 and counts["done"] + counts["pending"] == 4
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT SUM(attempts) FROM runs").fetchone()[0] == counts["done"] + 2  # none after
    connection.close()


def test_in_process_interrupt_marks_the_run_interrupted(tmp_path, monkeypatch):
    from tiltedsam.harness import train as train_module

    config = SweepConfig(name="inproc", out_dir=str(tmp_path / "o"), optimizers=["sgd"], seeds=[0, 1], progress=False,
                         base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                               "budget": {"kind": "steps", "amount": 3}, "run": {"num_threads": 1}})

    def interrupted(config, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by run_sweep
        time.sleep(5)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(train_module, "train", interrupted)
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or what another library in this process installed
    with pytest.raises(KeyboardInterrupt) as caught:
        run_sweep(config)
    assert caught.value.exit_code == 143
    assert statuses(tmp_path / "o" / "sweep.db") == {"interrupted": 1, "pending": 1}
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


@pytest.mark.slow
def test_two_sweep_processes_split_the_grid(tmp_path):
    config = sweep_file(tmp_path, runs=8, steps=60, workers=1, name="pair")
    db = tmp_path / "out" / "sweep.db"
    first, second = start_sweep(config), start_sweep(config)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    connection = sqlite3.connect(db)
    rows = connection.execute("SELECT status, attempts FROM runs").fetchall()
    connection.close()
    assert rows == [("done", 1)] * 8  # every run trained exactly once
    done = [int(out.split(" runs done")[0].rsplit(" ", 1)[-1]) for out, _ in outputs]
    assert sum(done) == 8


def test_claims_are_exclusive_and_stale_leases_are_reclaimed(tmp_path):
    connection = open_database(tmp_path, create=True)
    connection.execute("INSERT INTO runs (run_key, label, optimizer, seed, setting, config, run_dir) "
                       "VALUES ('k1', 'sgd', 'sgd', 0, '{}', '{}', 'r1'), ('k2', 'sgd', 'sgd', 1, '{}', '{}', 'r2')")
    now = time.time()
    assert claim_run(connection, "otherhost:1:a", ["k1", "k2"], since=now) == "k1"
    assert claim_run(connection, "otherhost:2:b", ["k1", "k2"], since=now) == "k2"  # k1 is leased
    assert claim_run(connection, "otherhost:3:c", ["k1", "k2"], since=now) is None
    connection.execute("UPDATE runs SET heartbeat = heartbeat - 120 WHERE run_key='k1'")  # its owner went silent
    assert claim_run(connection, "otherhost:3:c", ["k1", "k2"], since=now, lease_seconds=60) == "k1"
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    connection.execute("UPDATE runs SET owner=? WHERE run_key='k2'", (f"{socket.gethostname()}:{dead.pid}:x",))
    assert claim_run(connection, "otherhost:4:d", ["k2"], since=now) == "k2"  # its owner process is gone
    assert [tuple(r) for r in connection.execute("SELECT attempts FROM runs ORDER BY run_key")] == [(2,), (2,)]
    connection.close()


def test_a_schema_1_database_is_migrated_and_its_crashed_run_reclaimed(tmp_path):
    """Databases written before the leases existed keep their runs; a 'running' row left by a crash
    has no heartbeat and is claimable at once."""
    old = sqlite3.connect(tmp_path / "sweep.db")
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE runs (
            run_key TEXT PRIMARY KEY, label TEXT NOT NULL, optimizer TEXT NOT NULL, seed INTEGER NOT NULL,
            setting TEXT NOT NULL, config TEXT NOT NULL, run_dir TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','running','done','failed')),
            attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, result TEXT, error TEXT);
        CREATE TABLE epochs (run_key TEXT NOT NULL REFERENCES runs(run_key), epoch INTEGER NOT NULL,
                             metrics TEXT NOT NULL, PRIMARY KEY (run_key, epoch));
        INSERT INTO meta VALUES ('schema_version', '1'), ('package_version', '0.1.0');
        INSERT INTO runs (run_key, label, optimizer, seed, setting, config, run_dir, status, attempts, result)
            VALUES ('d', 'sgd', 'sgd', 0, '{}', '{}', 'rd', 'done', 1, '{"final_test_acc": 0.9}'),
                   ('r', 'sgd', 'sgd', 1, '{}', '{}', 'rr', 'running', 1, NULL);
        INSERT INTO epochs VALUES ('d', 1, '{"epoch": 1}');
    """)
    old.close()
    connection = open_database(tmp_path)
    assert dict(connection.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == "2"
    rows = {r["run_key"]: (r["status"], r["attempts"], r["owner"]) for r in connection.execute("SELECT * FROM runs")}
    assert rows == {"d": ("done", 1, None), "r": ("running", 1, None)}
    assert connection.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 1
    assert claim_run(connection, "host:1:x", ["d", "r"], since=time.time()) == "r"
    connection.execute("UPDATE runs SET status='interrupted' WHERE run_key='r'")  # the new status is allowed
    connection.close()
