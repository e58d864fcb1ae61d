"""Sweeps: grid expansion, SQLite bookkeeping, crash + restart runs each point once, reports."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

import pytest

from tiltedsam.cli import main
from tiltedsam.harness import train as train_module
from tiltedsam.harness.config import ConfigError
from tiltedsam.harness.report import build_report, mean_std, write_report
from tiltedsam.harness.rundir import read_metrics, read_result
from tiltedsam.harness.train import resolve_budget
from tiltedsam.optim.registry import grad_evals_per_step
from tiltedsam.harness.sweep import SweepConfig, SweepError, expand_grid, open_database, run_sweep


def tiny_sweep(out, **changes):
    data = dict(
        name="t", out_dir=str(out), optimizers=["sgd", "tsam"], seeds=[0, 1], workers=1, progress=False,
        base={"data": {"name": "digits", "limit": 240, "label_noise": 0.2}, "model": {"name": "mlp"},
              "budget": {"kind": "epochs", "amount": 2}, "run": {"num_threads": 1}},
        grid={"lr": [0.02, 0.05]}, per_optimizer={"tsam": {"t": [0.0, 5.0], "s": [2]}},
    )
    data.update(changes)
    return SweepConfig(**data)


def test_grid_expansion_applies_per_optimizer_axes_only_to_their_optimizer(tmp_path):
    points = expand_grid(tiny_sweep(tmp_path))
    counts = Counter(p.label for p in points)
    assert counts == {"sgd": 2 * 2, "tsam": 2 * 2 * 2}  # lr x seeds; lr x t x seeds
    assert all("optimizer.settings.tilt" not in p.setting for p in points if p.label == "sgd")
    tsam = [p for p in points if p.label == "tsam"]
    assert {p.config.optimizer.settings["tilt"] for p in tsam} == {0.0, 5.0}
    assert len({p.key for p in points}) == len(points)
    esam1 = expand_grid(tiny_sweep(tmp_path, optimizers=["esam1"], per_optimizer={}))[0]
    # ESAM1 gets TSAM's budget from the registry: 2 epochs of TSAM's evaluations in SAM steps of 2
    assert resolve_budget(esam1.config, steps_per_epoch=10).total_steps == 2 * 10 * grad_evals_per_step("tsam") // 2
    with pytest.raises(ConfigError, match="neither a registered optimizer"):
        expand_grid(tiny_sweep(tmp_path, optimizers=["nope"], per_optimizer={}))
    with pytest.raises(ConfigError, match="per_optimizer.tsam"):
        tiny_sweep(tmp_path, optimizers=["sgd"])


def test_sweep_killed_midway_then_restarted_runs_each_point_once(tmp_path, monkeypatch):
    sweep = tiny_sweep(tmp_path / "s", per_optimizer={"tsam": {"t": [5.0], "s": [2]}}, grid={"lr": [0.05]})
    keys = [p.key for p in expand_grid(sweep)]
    assert len(keys) == 4
    real_train = train_module.train
    calls: list[str] = []

    def crashing_train(config, **kwargs):
        calls.append(config.run.out_dir)
        if len(calls) == 3:  # the third run dies after its first epoch, like a killed process
            def die(row):
                raise KeyboardInterrupt
            kwargs["on_epoch"] = die
        return real_train(config, **kwargs)

    monkeypatch.setattr(train_module, "train", crashing_train)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep)
    db = sqlite3.connect(tmp_path / "s" / "sweep.db")
    status = dict(db.execute("SELECT run_key, status FROM runs").fetchall())
    assert Counter(status.values()) == {"done": 2, "interrupted": 1, "pending": 1}  # not left 'running'
    finished_before = dict(db.execute("SELECT run_key, finished FROM runs WHERE status='done'").fetchall())

    monkeypatch.setattr(train_module, "train", real_train)
    counts = run_sweep(sweep)
    assert counts == {"done": 2, "failed": 0, "skipped": 2, "elsewhere": 0}
    rows = {r[0]: r[1:] for r in db.execute("SELECT run_key, status, attempts, finished FROM runs")}
    assert set(rows) == set(keys) and all(r[0] == "done" for r in rows.values())
    for key, finished in finished_before.items():  # done runs were not run again
        assert rows[key][1] == 1 and rows[key][2] == finished
    assert sorted(r[1] for r in rows.values()) == [1, 1, 1, 2]  # only the killed run started twice
    epochs = {k: len(read_metrics(d)) for k, d in db.execute("SELECT run_key, run_dir FROM runs")}
    assert epochs == {k: 2 for k in keys}  # the killed run's first epoch is not repeated
    db.close()
    assert run_sweep(sweep) == {"done": 0, "failed": 0, "skipped": 4, "elsewhere": 0}

    report = write_report(tmp_path / "s")
    assert set(report.summary) == {"sgd", "tsam"}
    for name in ("report.md", "accuracy.csv", "cost.csv", "runs.csv", "convergence.png"):
        assert (tmp_path / "s" / name).stat().st_size > 0, name
    results = [read_result(d) for (d,) in sqlite3.connect(tmp_path / "s" / "sweep.db").execute(
        "SELECT run_dir FROM runs WHERE label='tsam'")]
    mean, std = mean_std([r["best_val_test_acc"] for r in results])
    assert report.summary["tsam"]["best_val_test_acc"] == pytest.approx((mean, std))
    assert f"{100 * mean:.2f} ± {100 * std:.2f}" in report.markdown


def test_report_selects_the_setting_with_best_validation_accuracy(tmp_path):
    sweep = tiny_sweep(tmp_path / "g", optimizers=["sgd"], per_optimizer={}, grid={"lr": [0.001, 0.05]},
                       seeds=[0])
    run_sweep(sweep)
    db = sqlite3.connect(tmp_path / "g" / "sweep.db")
    by_setting = {r[0]: read_result(r[1])["best_val_acc"] for r in db.execute("SELECT setting, run_dir FROM runs")}
    assert len(by_setting) == 2 and len(set(by_setting.values())) == 2
    best_setting = max(by_setting, key=by_setting.get)
    report = build_report(tmp_path / "g")
    assert report.summary["sgd"]["setting"] == json.loads(best_setting)


def test_missing_or_foreign_databases_give_clear_errors(tmp_path, capsys):
    with pytest.raises(SweepError, match="no sweep database"):
        open_database(tmp_path / "none")
    with pytest.raises(SystemExit, match="no sweep database"):
        main(["report", str(tmp_path / "none")])
    connection = open_database(tmp_path / "old", create=True)
    connection.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    connection.close()
    with pytest.raises(SweepError, match="schema version '0'.*schema version 3"):
        open_database(tmp_path / "old")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE x (y)")
    other.close()
    with pytest.raises(SweepError, match="not a tiltedsam sweep database"):
        open_database(tmp_path / "other.db")


def test_sweep_and_report_commands(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(f"""
name = "cli"
out_dir = {json.dumps(str(tmp_path / "out"))}
optimizers = ["sam"]
seeds = [0]
progress = false
[base]
data = {{name = "digits", limit = 200}}
model = {{name = "mlp"}}
budget = {{kind = "steps", amount = 5}}
[grid]
rho = [0.05]
""")
    assert main(["sweep", str(tmp_path / "s.toml")]) == 0
    assert "| sam |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "out" / "sweep.db")]) == 0
    assert "Test accuracy (Table 1 style)" in capsys.readouterr().out
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert main(["report", str(run_dir)]) == 0
    assert "Final test accuracy" in capsys.readouterr().out
    (run_dir / "result.json").write_text(json.dumps({"format": "tiltedsam.result/0"}))
    with pytest.raises(SystemExit, match="another tiltedsam version"):
        main(["report", str(run_dir)])
    (tmp_path / "bad.toml").write_text("optimizers = ['sgd']\nworkerz = 2\n")
    with pytest.raises(SystemExit, match="workerz"):
        main(["sweep", str(tmp_path / "bad.toml")])
