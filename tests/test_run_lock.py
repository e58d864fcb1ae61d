"""One writer per run directory: the OS lock every training process holds on its run directory.

A second ``train --resume`` on a live run, a sweep that reclaims the run of a stopped (but alive)
owner, a run directory deleted under a training run, ``--resume`` of a finished run whose
checkpoint is gone, and a failed ``train`` that must not leave an empty run directory behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.config import load_config
from tiltedsam.harness.runlock import (RunDirectoryBusy, RunDirectoryLock, RunDirectoryLost,
                                       read_owner)
from tiltedsam.harness.train import train

TINY = ["--set", "data.name=digits", "--set", "data.limit=200", "--set", "model.name=mlp",
        "--set", "budget.amount=2", "--set", "run.progress=false", "--set", "run.num_threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Holder:
    """Another live process that holds ``run_dir``'s lock until the test ends."""

    def __init__(self, run_dir: Path, owner: str = "elsewhere:1:deadbeef") -> None:
        code = ("import sys; from tiltedsam.harness.runlock import RunDirectoryLock; "
                f"lock = RunDirectoryLock({str(run_dir)!r}, owner={owner!r}).acquire(); "
                "print('held', flush=True); sys.stdin.read()")
        self.process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=ENV)
        assert self.process.stdout.readline().strip() == "held"

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def error_line(argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:
        text = str(exc.code)
        assert text.startswith("error: ") and "\n" not in text, text
        return text
    assert code == 1, code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path):
    with Holder(tmp_path, owner="hostA:42:cafe1234"):
        with pytest.raises(RunDirectoryBusy, match="hostA:42:cafe1234"):
            RunDirectoryLock(tmp_path).acquire()
    with RunDirectoryLock(tmp_path, owner="me") as outer:  # released by the holder's death: ours now
        with RunDirectoryLock(tmp_path) as inner:
            inner.verify()
        outer.verify()  # the nested one did not release the OS lock
        assert read_owner(tmp_path) == "me"
        script = (f"from tiltedsam.harness.runlock import RunDirectoryLock as L; L({str(tmp_path)!r}).acquire()")
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV)
        assert other.returncode == 1 and "RunDirectoryBusy" in other.stderr
    RunDirectoryLock(tmp_path).acquire().release()


def test_second_resume_of_a_live_run_gets_one_error_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--stop-after-epochs", "1"]) == 3
    before = (out / "checkpoint.pt").read_bytes()
    with Holder(out):
        text = error_line(["train", "--resume", "--out", str(out)], capsys)
    assert "in use by elsewhere:1:deadbeef" in text and str(out) in text
    assert (out / "checkpoint.pt").read_bytes() == before and not (out / "result.json").exists()


def test_a_reclaimed_lease_of_a_live_owner_goes_back_to_it(tmp_path):
    """Clock skew or a stopped owner: its lease looks stale, but its process holds the run directory.
    The reclaiming sweep neither trains the run nor marks it failed; the row is the owner's again."""
    from tiltedsam.harness.sweep import (SweepConfig, claim_run, execute_run, expand_grid, open_database,
                                         register_points)

    sweep = SweepConfig(name="s", out_dir=str(tmp_path / "s"), optimizers=["sgd"], seeds=[0], progress=False,
                        base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                              "budget": {"amount": 1}, "run": {"num_threads": 1}})
    points = expand_grid(sweep)
    connection = open_database(sweep.out_dir, create=True)
    register_points(connection, points)
    key, run_dir = points[0].key, Path(points[0].config.run.out_dir)
    live_owner = "otherhost:4242:0123abcd"  # another host: only its heartbeat speaks for it
    connection.execute("UPDATE runs SET status='running', owner=?, heartbeat=?, attempts=1 WHERE run_key=?",
                       (live_owner, time.time() - 3600, key))
    run_dir.mkdir(parents=True)
    with Holder(run_dir, owner=live_owner):
        me = "thishost:1:feedbeef"
        assert claim_run(connection, me, [key], since=time.time(), lease_seconds=60) == key  # looks stale
        assert execute_run(str(Path(sweep.out_dir) / "sweep.db"), key, 1, me) == (key, "elsewhere")
        row = connection.execute("SELECT status, owner FROM runs WHERE run_key=?", (key,)).fetchone()
        assert tuple(row) == ("running", live_owner)
        assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "result.json").exists()
    connection.close()


def test_a_run_directory_deleted_mid_run_is_not_recreated(tmp_path):
    out = tmp_path / "run"
    config = load_config(None, {"data.name": "digits", "data.limit": 200, "model.name": "mlp",
                                "budget.amount": 3, "run.progress": False, "run.num_threads": 1,
                                "run.out_dir": str(out)})
    with pytest.raises(RunDirectoryLost, match="deleted or replaced"):
        train(config, on_epoch=lambda row: shutil.rmtree(out))
    assert not out.exists()


def test_resume_of_a_finished_run_without_its_checkpoint_does_not_retrain(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    (out / "checkpoint.pt").unlink()
    result = (out / "result.json").read_bytes()
    text = error_line(["train", "--resume", "--out", str(out)], capsys)
    assert "refusing to train it again" in text
    assert (out / "result.json").read_bytes() == result


def test_a_failed_train_leaves_no_empty_run_directory(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    error_line(["train", *TINY, "--set", "data.name=no-such-data", "--out", str(out)], capsys)
    assert not out.exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    error_line(["train", *TINY, "--set", "data.name=no-such-data", "--out", str(existing)], capsys)
    assert existing.is_dir()  # a folder the user made is never removed
