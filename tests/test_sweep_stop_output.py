"""What a user sees when a sweep with several workers stops or warns: one line each, no Python noise.

Ctrl-C (SIGINT to the process group) of a sweep with two workers ends with the ``interrupted:`` line
and nothing after it (a worker stopped by SIGTERM left tqdm's multiprocessing semaphore to the
resource tracker, which then reported "leaked semaphore objects"); a warning raised in a worker is
printed as ``warning: Category: message``, without the echoed source line.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sweep_file(tmp_path: Path, runs: int, steps: int) -> Path:
    config = tmp_path / "sweep.toml"
    config.write_text(f"""
name = "stop"
out_dir = "{tmp_path / 'out'}"
optimizers = ["sgd"]
seeds = {list(range(runs))}
workers = 2
threads_per_worker = 1
[base]
data = {{name = "digits", limit = 400}}
model = {{name = "mlp"}}
budget = {{kind = "steps", amount = {steps}}}
""")
    return config


def _running(db: Path) -> int:
    if not db.exists():
        return 0
    connection = sqlite3.connect(db, timeout=60)
    try:
        return connection.execute("SELECT COUNT(*) FROM runs WHERE status='running'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


@pytest.mark.slow
def test_ctrl_c_of_a_two_worker_sweep_prints_no_leaked_semaphore_warning(tmp_path):
    config = _sweep_file(tmp_path, runs=4, steps=2000)
    sweep = subprocess.Popen([sys.executable, "-m", "tiltedsam", "sweep", str(config), "--no-report"], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while _running(tmp_path / "out" / "sweep.db") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # the workers are training (their tqdm locks exist)
        os.killpg(sweep.pid, signal.SIGINT)
        code = sweep.wait(timeout=60)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    stderr = sweep.stderr.read()
    assert code == 130, stderr
    assert "leaked semaphore" not in stderr and "resource_tracker" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: ")


def test_warnings_are_one_clean_line(capsys):
    from tiltedsam import _warning_lines

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        _warning_lines.install()
        warnings.warn("tilt diagnostics:\n  ESS 1.0 of 8", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: UserWarning: tilt diagnostics: ESS 1.0 of 8\n"


def test_a_signal_right_after_a_claim_commits_stays_an_interrupt(tmp_path):
    """Ctrl-C that lands after ``COMMIT`` (or before ``BEGIN``) of a claim: the sweep's interrupt, not
    ``error: cannot rollback - no transaction is active`` (seen with SIGINT from a terminal)."""
    from tiltedsam.harness.sweep import claim_run, open_database

    connection = open_database(tmp_path, create=True)
    connection.execute("INSERT INTO runs (run_key, label, optimizer, seed, setting, config, run_dir) "
                       "VALUES ('k', 'sgd', 'sgd', 0, '{}', '{}', 'd')")

    class SignalAfterCommit:
        def __init__(self, inner):
            self.inner = inner

        @property
        def in_transaction(self):
            return self.inner.in_transaction

        def execute(self, sql, *args):
            cursor = self.inner.execute(sql, *args)
            if sql == "COMMIT":
                raise KeyboardInterrupt
            return cursor

    with pytest.raises(KeyboardInterrupt):
        claim_run(SignalAfterCommit(connection), "me:1:x", ["k"], since=time.time())
    connection.close()
