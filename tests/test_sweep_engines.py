"""Engines without Ray: the SLURM path through submitit's local executor (same numbers as the local
engine; a preempted task is requeued and resumes), workers spread over the visible devices, the
network-file-system warning, a lease owner on another host is never taken for dead, the CLI's errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.engines import common, local
from tiltedsam.harness.sweep import SweepConfig, _owner_is_dead, expand_grid, run_sweep

TIMINGS = ("train_seconds", "wall_seconds")


def digits_grid(out, **changes) -> SweepConfig:
    data = dict(name="g", out_dir=str(out), optimizers=["sgd", "sam"], seeds=[0], workers=1, progress=False,
                base={"data": {"name": "digits", "limit": 300}, "model": {"name": "mlp"},
                      "budget": {"kind": "epochs", "amount": 1}, "run": {"num_threads": 1}})
    data.update(changes)
    return SweepConfig(**data)


def results(out) -> dict[str, dict]:
    return {p.parent.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMINGS}
            for p in sorted(Path(out, "runs").glob("*/result.json"))}


def statuses(out) -> list[tuple]:
    connection = sqlite3.connect(Path(out) / "sweep.db")
    try:
        return sorted(connection.execute("SELECT status, attempts FROM runs").fetchall())
    finally:
        connection.close()


def preempt_after_first_epoch(config, row):
    """Send this task the signal SLURM sends before preemption, once, after epoch 1's checkpoint."""
    marker = Path(config.run.out_dir) / "preempted-once"
    if row["epoch"] == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(30)  # the handler exits the task long before


@pytest.mark.slow
def test_slurm_engine_on_submitits_local_executor_matches_local_and_resumes_a_preempted_task(tmp_path):
    pytest.importorskip("submitit")
    import cloudpickle

    from tiltedsam.harness.engines.slurm import run_sweep_on_slurm

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook runs in the submitit task
    sweep = digits_grid(tmp_path / "slurm")
    sweep.base["budget"]["amount"] = 2
    counts = run_sweep_on_slurm(sweep, cluster="local", poll_seconds=0.5, epoch_hook=preempt_after_first_epoch)
    assert counts == {"done": 2, "failed": 0, "skipped": 0, "elsewhere": 0}
    assert statuses(tmp_path / "slurm") == [("done", 1)] * 2
    for point in expand_grid(sweep):
        run_dir = Path(point.config.run.out_dir)
        assert (run_dir / "preempted-once").is_file()  # every task was preempted once and requeued
        assert [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]
    reference = digits_grid(tmp_path / "local")
    reference.base["budget"]["amount"] = 2
    assert run_sweep(reference)["done"] == 2
    assert results(tmp_path / "slurm") == results(tmp_path / "local") and len(results(tmp_path / "local")) == 2
    logs = "".join(path.read_text() for path in (tmp_path / "slurm/slurm").glob("*/*_log.out"))
    assert logs.count("Requeued job") == 2 and logs.count("Job completed successfully") == 2
    assert json.loads((tmp_path / "slurm/slurm/jobs.json").read_text()).keys() == {p.key for p in expand_grid(sweep)}
    assert run_sweep_on_slurm(sweep, cluster="local")["skipped"] == 2


@pytest.mark.slow
def test_two_visible_devices_give_two_workers_different_devices(tmp_path, monkeypatch):
    assert local.worker_devices("cpu", 3) == [None, None, None]  # one device: the config decides
    monkeypatch.setattr(local, "visible_devices", lambda requested: ["cpu:0", "cpu:1"])  # two "GPUs"
    assert local.worker_devices("cuda", 3) == ["cpu:0", "cpu:1", "cpu:0"]
    sweep = digits_grid(tmp_path, optimizers=["sgd"], seeds=[0, 1, 2, 3], workers=2, threads_per_worker=1)
    assert run_sweep(sweep)["done"] == 4
    devices = {}
    for point in expand_grid(sweep):
        saved = json.loads((Path(point.config.run.out_dir) / "config.json").read_text())
        devices[point.seed] = saved["run"]["device"]
    assert set(devices.values()) == {"cpu:0", "cpu:1"}  # both workers trained, each on its own device


def test_network_file_systems_are_recognised_from_the_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\n"
                      f"/dev/sdb1 {tmp_path}/local ext4 rw 0 0\n")
    (tmp_path / "local").mkdir()
    assert common.filesystem_type(tmp_path / "sweep" / "deeper", str(mounts)) == "nfs4"
    assert common.filesystem_type(tmp_path / "local", str(mounts)) == "ext4"
    with pytest.warns(UserWarning, match="network file system \\(nfs4\\)"):
        assert common.warn_if_network_filesystem(tmp_path / "sweep", str(mounts)) == "nfs4"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert common.warn_if_network_filesystem(tmp_path / "local", str(mounts)) is None


def test_a_lease_owner_on_another_host_is_unknown_never_dead():
    assert _owner_is_dead(f"{socket.gethostname()}:{2**22 + 12345}:abc")  # no such pid here: dead
    assert not _owner_is_dead(f"another-{socket.gethostname()}:{2**22 + 12345}:abc")  # elsewhere: unknown
    assert not _owner_is_dead(f"{socket.gethostname()}:{os.getpid()}:abc")


HOLD_LOCK = """
import sys, time
from tiltedsam.harness.runlock import RunDirectoryLock
with RunDirectoryLock(sys.argv[1], owner="other-host:4242"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def test_a_trial_waits_for_the_run_directory_lock_of_another_process_then_takes_it(tmp_path):
    from tiltedsam.harness.runlock import LOCK_NAME, RunDirectoryBusy

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy, match="other-host:4242"):  # no wait: refused at once
            common.lock_run_directory(run_dir)
        with common.lock_run_directory(run_dir, wait=120):  # taken once the other process lets go
            assert holder.stdout.readline().strip() == "released"  # not before the holder let go
            assert (run_dir / LOCK_NAME).read_text().strip() == f"{socket.gethostname()}:{os.getpid()}"
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
    with common.lock_run_directory(tmp_path / "new" / "run"):  # a missing run directory is created
        assert (tmp_path / "new" / "run" / LOCK_NAME).is_file()


def test_engine_errors_are_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text('optimizers = ["sgd"]\n[base]\ndata = {name = "digits"}\nmodel = {name = "mlp"}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(config), "--out", str(tmp_path / "o"), "--address", "auto"])
    assert str(exit_info.value) == "error: --address is for --engine ray, not --engine local"
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(config), "--out", str(tmp_path / "o"), "--engine", "ray", "--cpus-per-run", "0"])
    assert str(exit_info.value).startswith("error: cpus_per_run = 0 is invalid")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(config), "--out", str(tmp_path / "o"), "--engine", "ray"])
    assert str(exit_info.value) == "error: --engine ray needs Ray, which is not installed: pip install 'tiltedsam[ray]'"
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(config), "--out", str(tmp_path / "o"), "--engine", "slurm"])
    assert "pip install 'tiltedsam[slurm]'" in str(exit_info.value)
