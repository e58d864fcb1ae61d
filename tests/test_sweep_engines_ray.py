"""The Ray engine: every run key trains exactly once, a killed trial resumes without a gap, a
deterministic failure is recorded once, a killed driver's rerun repeats nothing, and a local sweep
on the same output leaves the runs the Ray driver holds alone. One local Ray instance per module."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # starting Ray alone takes 5-15 s here; each test trains several runs

from tiltedsam.harness.config import RunConfig, from_dict  # noqa: E402
from tiltedsam.harness.engines.ray_engine import run_sweep_on_ray  # noqa: E402
from tiltedsam.harness.report import write_report  # noqa: E402
from tiltedsam.harness.sweep import SweepConfig, expand_grid, run_sweep  # noqa: E402
from tiltedsam.harness.train import train  # noqa: E402

TIMINGS = ("train_seconds", "wall_seconds")


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the epoch hooks below run in Ray workers
    try:
        yield ray
    finally:
        ray.shutdown()


def digits_grid(out, **changes) -> SweepConfig:
    """The small digits grid: sgd and sam, seeds 0 and 1, one epoch of the MLP."""
    data = dict(name="g", out_dir=str(out), optimizers=["sgd", "sam"], seeds=[0, 1], workers=1, progress=False,
                base={"data": {"name": "digits", "limit": 300}, "model": {"name": "mlp"},
                      "budget": {"kind": "epochs", "amount": 1}, "run": {"num_threads": 1}},
                lease_seconds=30.0)
    data.update(changes)
    return SweepConfig(**data)


def results(out) -> dict[str, dict]:
    """run directory name -> result.json without its timings."""
    found = {}
    for path in sorted(Path(out, "runs").glob("*/result.json")):
        result = json.loads(path.read_text())
        found[path.parent.name] = {k: v for k, v in result.items() if k not in TIMINGS}
    return found


def rows(out, sql):
    connection = sqlite3.connect(Path(out) / "sweep.db")
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def metrics(run_dir) -> list[dict]:
    lines = Path(run_dir, "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:]]


def without_timings(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in table]


def test_ray_grid_trains_every_key_once_with_the_local_engines_numbers(ray_instance, tmp_path):
    counts = run_sweep_on_ray(digits_grid(tmp_path / "ray"))
    assert counts == {"done": 4, "failed": 0, "skipped": 0, "elsewhere": 0}
    assert sorted(rows(tmp_path / "ray", "SELECT status, attempts FROM runs")) == [("done", 1)] * 4
    assert run_sweep(digits_grid(tmp_path / "local"))["done"] == 4
    ray_results, local_results = results(tmp_path / "ray"), results(tmp_path / "local")
    assert len(ray_results) == 4 and ray_results == local_results
    reports = [write_report(tmp_path / name) for name in ("ray", "local")]
    assert reports[0].markdown.split("## Cost")[0] == reports[1].markdown.split("## Cost")[0]
    assert (tmp_path / "ray/accuracy.csv").read_text() == (tmp_path / "local/accuracy.csv").read_text()
    for run_dir in sorted(Path(tmp_path, "ray", "runs").iterdir()):  # the epochs: in the run directory only
        table = without_timings(metrics(run_dir))
        assert len(table) == 1 and table == without_timings(metrics(tmp_path / "local" / "runs" / run_dir.name))
    tables = {name for (name,) in rows(tmp_path / "ray", "SELECT name FROM sqlite_master WHERE type='table'")}
    columns = {column[1] for column in rows(tmp_path / "ray", "PRAGMA table_info(runs)")}
    assert tables == {"meta", "runs"} and "result" not in columns  # the index holds no copy of them
    # the same command again finds everything done
    assert run_sweep_on_ray(digits_grid(tmp_path / "ray"))["skipped"] == 4


def kill_after_first_epoch(config, row):
    """SIGKILL the trial's own process once, right after the checkpoint of epoch 1."""
    marker = Path(config.run.out_dir) / "killed-once"
    if row["epoch"] == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def test_trial_killed_after_its_first_epoch_is_retried_and_continues_without_a_gap(ray_instance, tmp_path):
    sweep = digits_grid(tmp_path / "ray", optimizers=["sgd"], seeds=[0])
    sweep.base["budget"]["amount"] = 3
    counts = run_sweep_on_ray(sweep, epoch_hook=kill_after_first_epoch)
    assert counts["done"] == 1 and counts["failed"] == 0
    (point,) = expand_grid(sweep)
    run_dir = Path(point.config.run.out_dir)
    assert (run_dir / "killed-once").is_file()  # it was killed
    table = metrics(run_dir)
    assert [row["epoch"] for row in table] == ["1", "2", "3"]
    # an uninterrupted run of the same config gives the same epochs and result
    config = from_dict(RunConfig, json.loads(rows(tmp_path / "ray", "SELECT config FROM runs")[0][0]))
    config.run.out_dir = str(tmp_path / "uninterrupted")
    config.run.progress = False
    expected = train(config)
    assert without_timings(table) == without_timings(metrics(tmp_path / "uninterrupted"))
    got = json.loads((run_dir / "result.json").read_text())
    assert {k: v for k, v in got.items() if k not in TIMINGS} == {k: v for k, v in expected.items() if k not in TIMINGS}


def test_a_diverging_run_is_marked_failed_after_one_attempt(ray_instance, tmp_path):
    sweep = digits_grid(tmp_path / "ray", optimizers=["sgd"], seeds=[0], grid={"lr": [0.05, 1e6]})
    counts = run_sweep_on_ray(sweep)
    assert counts == {"done": 1, "failed": 1, "skipped": 0, "elsewhere": 0}
    found = rows(tmp_path / "ray", "SELECT status, attempts, error FROM runs ORDER BY status")
    assert [(s, a) for s, a, _ in found] == [("done", 1), ("failed", 1)]
    assert "RunDiverged" in found[1][2] and "diverged" in found[1][2] and "\n" not in found[1][2]
    assert run_sweep_on_ray(sweep, retry_failed=False) == {"done": 0, "failed": 0, "skipped": 2, "elsewhere": 0}


def record_epochs(config, row):
    with open(Path(config.run.out_dir) / "trained-by-rerun", "a") as handle:
        handle.write(f"{row['epoch']}\n")


DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import ray, test_sweep_engines_ray as t
    ray.cloudpickle.register_pickle_by_value(t)
    from tiltedsam.harness.engines.ray_engine import run_sweep_on_ray

    def kill_driver(config, row, driver=os.getpid()):
        if config.seed == 1 and row["epoch"] == 1:
            Path(config.run.out_dir, "worker.pid").write_text(str(os.getpid()))
            os.kill(driver, 9)
            time.sleep(60)   # the cluster's reaper ends this worker long before

    sweep = t.digits_grid({out!r}, optimizers=["sgd"])
    sweep.base["budget"]["amount"] = 2
    run_sweep_on_ray(sweep, num_cpus=1, epoch_hook=kill_driver)
""")


def test_driver_killed_then_rerun_repeats_no_finished_run_or_epoch(ray_instance, tmp_path):
    out = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    script = DRIVER.format(tests=str(Path(__file__).parent), out=str(out))
    driver = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert driver.returncode == -signal.SIGKILL, driver.stderr[-2000:]
    sweep = digits_grid(out, optimizers=["sgd"])
    sweep.base["budget"]["amount"] = 2
    points = {p.seed: Path(p.config.run.out_dir) for p in expand_grid(sweep)}
    worker = int((points[1] / "worker.pid").read_text())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        time.sleep(0.5)
    assert not Path(f"/proc/{worker}").exists(), "a Ray worker outlived its killed driver"
    finished_before = (points[0] / "result.json").read_bytes()
    counts = run_sweep_on_ray(sweep, epoch_hook=record_epochs)
    assert counts["failed"] == 0 and counts["done"] + counts["skipped"] == 2
    assert (points[0] / "result.json").read_bytes() == finished_before  # not trained again
    assert not (points[0] / "trained-by-rerun").exists()
    assert (points[1] / "trained-by-rerun").read_text().split() == ["2"]  # only the missing epoch
    assert [row["epoch"] for row in metrics(points[1])] == ["1", "2"]
    assert sorted(rows(out, "SELECT status FROM runs")) == [("done",), ("done",)]


def hold_until_released(config, row):
    release = Path(config.run.out_dir).parent.parent / "release"
    deadline = time.monotonic() + 240
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_a_local_sweep_started_during_a_ray_sweep_leaves_its_runs_alone(ray_instance, tmp_path):
    out = tmp_path / "shared"
    sweep = digits_grid(out)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(run_sweep_on_ray(sweep, epoch_hook=hold_until_released)))
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "sweep.db").exists() and \
                    rows(out, "SELECT COUNT(*) FROM runs WHERE status='running'") == [(4,)]:
                break
            time.sleep(0.2)
        local = run_sweep(digits_grid(out))
        assert local == {"done": 0, "failed": 0, "skipped": 0, "elsewhere": 4}
    finally:
        (out / "release").write_text("")
        thread.join(timeout=300)
    assert outcome == {"done": 4, "failed": 0, "skipped": 0, "elsewhere": 0}
    assert sorted(rows(out, "SELECT status, attempts FROM runs")) == [("done", 1)] * 4
