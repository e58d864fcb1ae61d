"""A diverged run fails loudly (CLI and sweep, named in the report) and no JSON the harness writes
holds NaN or Infinity; infinite settings round-trip through configs and the sweep index as "inf"."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import torch

from cli_support import TINY, cli_error, strict_json
from tiltedsam import _json
from tiltedsam.cli import main
from tiltedsam.harness.config import load_config
from tiltedsam.harness.rundir import read_metrics
from tiltedsam.harness.sweep import SweepConfig, run_sweep


def test_strict_json_helper():
    text = _json.dumps({"a": float("nan"), "b": [float("inf"), 1.5, (2, -float("inf"))], "c": torch.tensor(0.5)})
    assert strict_json(text) == {"a": None, "b": [None, 1.5, [2, None]], "c": 0.5}


def test_diverged_sgd_run_fails_loudly(tmp_path, capsys):
    out = tmp_path / "lr1e6"
    line = cli_error(["train", *TINY, "--set", "optimizer.lr=1e6", "--out", str(out)], capsys)
    assert "run diverged" in line and "optimizer.lr" in line
    assert not (out / "result.json").exists()
    strict_json((out / "run.json").read_text())


def test_diverged_run_is_failed_in_the_sweep_and_the_report_names_it(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(f"""
name = "div"
out_dir = {json.dumps(str(tmp_path / "out"))}
optimizers = ["sgd"]
seeds = [0]
progress = false
[base]
data = {{name = "digits", limit = 200}}
model = {{name = "mlp"}}
budget = {{kind = "steps", amount = 4}}
run = {{num_threads = 1, progress = false}}
[grid]
lr = [0.05, 1e6]
""")
    assert main(["sweep", str(tmp_path / "s.toml")]) == 1  # a failed run: non-zero exit
    out = capsys.readouterr().out
    assert "1 runs done, 1 failed" in out and "failed: sgd seed 0" in out and "run diverged" in out
    db = sqlite3.connect(tmp_path / "out" / "sweep.db")
    status = dict(db.execute("SELECT json_extract(setting, '$.\"optimizer.lr\"'), status FROM runs"))
    assert status == {0.05: "done", 1e6: "failed"}
    run_dirs = dict(db.execute("SELECT status, run_dir FROM runs"))
    strict_json((Path(run_dirs["done"]) / "result.json").read_text())
    tilts = [row["tilt"] for row in read_metrics(run_dirs["done"])]  # SGD has no tilt: NaN, an empty-free cell
    assert tilts and all(math.isnan(t) for t in tilts)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "failed: 1" in report and "## Failed runs" in report and "run diverged" in report
    for name in ("summary.json", "sweep.json"):
        strict_json((tmp_path / "out" / name).read_text())


def test_configs_round_trip_infinite_settings_through_strict_json(tmp_path):
    """tilt = inf is a valid TSAM setting: config files and the sweep database write it as "inf"."""
    out = tmp_path / "inf"
    config = load_config(None, ["data.name=digits", "data.limit=200", "model.name=mlp", "optimizer.name=tsam",
                                "optimizer.settings={tilt = inf, num_samples = 2}", "budget.kind=steps",
                                "budget.amount=2", "run.progress=false", f"run.out_dir={json.dumps(str(out))}"])
    from tiltedsam.harness.config import save_config

    out.mkdir()
    save_config(config, out)
    saved = strict_json((out / "config.json").read_text())
    assert saved["optimizer"]["settings"]["tilt"] == "inf"
    assert load_config(out / "config.json").optimizer.settings["tilt"] == float("inf")
    sweep = SweepConfig(name="inf", out_dir=str(tmp_path / "s"), optimizers=["tsam"], seeds=[0], progress=False,
                        base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                              "budget": {"kind": "steps", "amount": 2}, "run": {"num_threads": 1}},
                        per_optimizer={"tsam": {"t": [float("inf")], "s": [2]}})
    assert run_sweep(sweep)["done"] == 1
    db = sqlite3.connect(tmp_path / "s" / "sweep.db")
    for column in ("config", "setting"):
        strict_json(db.execute(f"SELECT {column} FROM runs").fetchone()[0])
    strict_json((Path(db.execute("SELECT run_dir FROM runs").fetchone()[0]) / "result.json").read_text())
    db.close()
    from tiltedsam.harness.report import build_report

    assert build_report(tmp_path / "s").summary["tsam"]["setting"] == {"optimizer.settings.tilt": float("inf"),
                                                                        "optimizer.settings.num_samples": 2}
