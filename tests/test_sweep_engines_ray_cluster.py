"""The Ray engine on a simulated multi-node cluster (a node removed mid-run does not lose its run),
and Ctrl-C on the ``tiltedsam sweep --engine ray`` command (runs marked interrupted, no process left)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.slow  # a simulated cluster or a driver process: 20-60 s each here

from tiltedsam.harness.engines.ray_engine import run_sweep_on_ray  # noqa: E402
from tiltedsam.harness.sweep import SweepConfig, expand_grid  # noqa: E402


def one_run(out, epochs: int) -> SweepConfig:
    return SweepConfig(name="n", out_dir=str(out), optimizers=["sgd"], seeds=[0], progress=False,
                       base={"data": {"name": "digits", "limit": 300}, "model": {"name": "mlp"},
                             "budget": {"kind": "epochs", "amount": epochs}, "run": {"num_threads": 1}},
                       lease_seconds=30.0)


def park_after_first_epoch(config, row):
    """Record this worker's node after epoch 1 (first time only), then wait to be cut off."""
    marker = Path(config.run.out_dir) / "first-node"
    if row["epoch"] == 1 and not marker.exists():
        partial = marker.with_name("first-node.partial")
        partial.write_text(ray.get_runtime_context().get_node_id())
        partial.rename(marker)  # the test reads it whole
        time.sleep(120)


def test_a_node_removed_mid_run_does_not_lose_its_run(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        sweep = one_run(tmp_path / "out", epochs=3)
        (point,) = expand_grid(sweep)
        marker = Path(point.config.run.out_dir).resolve() / "first-node"
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(run_sweep_on_ray(sweep, lock_wait=60,
                                                                                 epoch_hook=park_after_first_epoch)))
        thread.start()
        deadline = time.monotonic() + 180
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        first = marker.read_text()
        (doomed,) = [node for node in nodes if node.node_id == first]
        cluster.remove_node(doomed)  # its raylet and workers die: the task is retried on the other node
        thread.join(timeout=300)
        assert outcome == {"done": 1, "failed": 0, "skipped": 0, "elsewhere": 0}
        lines = (Path(point.config.run.out_dir) / "metrics.csv").read_text().splitlines()[1:]
        assert [line.split(",")[0] for line in lines] == ["1", "2", "3"]  # resumed after epoch 1, no gap
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_ctrl_c_on_the_ray_command_marks_runs_interrupted_and_leaves_no_process(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('name = "c"\noptimizers = ["sgd", "sam"]\nseeds = [0, 1]\nprogress = false\n[base]\n'
                      'data = {name = "digits"}\nmodel = {name = "mlp"}\nbudget = {kind = "epochs", amount = 500}\n')
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    driver = subprocess.Popen([sys.executable, "-m", "tiltedsam", "sweep", str(config), "--out", str(out),
                               "--engine", "ray", "--no-report"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not list(out.glob("runs/*/checkpoint.pt")):
            time.sleep(0.5)
        assert list(out.glob("runs/*/checkpoint.pt")), "no run started training"
        started = psutil.Process(driver.pid).children(recursive=True)  # Ray's daemons and workers
        assert started
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started):
        time.sleep(0.5)
    left = [f"{p.pid} {p.name()}" for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes the command started are still running: {left}"
    connection = sqlite3.connect(out / "sweep.db")
    statuses = sorted(s for (s,) in connection.execute("SELECT status FROM runs"))
    connection.close()
    assert "running" not in statuses and "interrupted" in statuses
