"""The main job ``tiltedsam compare``: configuration, ESAM1's budget, and an end-to-end --quick run."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.compare import COMPARE_LABELS, compare_config, verdict
from tiltedsam.harness.sweep import expand_grid
from tiltedsam.optim.registry import REGISTRY, grad_evals_per_step


def test_compare_defaults_follow_the_brief():
    sweep = compare_config()
    assert sweep.optimizers == list(COMPARE_LABELS) == ["sgd", "sam", "esam1", "tsam"]
    assert all(label in REGISTRY or label == "esam1" for label in sweep.optimizers)
    assert sweep.seeds == [0, 1, 2, 3, 4] and sweep.out_dir == "results/compare"  # 5 seeds: paired intervals
    assert sweep.base["budget"] == {"kind": "epochs", "amount": 12}
    points = expand_grid(sweep)
    base = points[0].config
    assert (base.data.name, base.data.label_noise, base.model.name) == ("mnist5k", 0.2, "small_cnn")
    assert (base.batch_size, base.label_smoothing, base.optimizer.momentum) == (64, 0.1, 0.9)
    tsam = next(p.config for p in points if p.label == "tsam")
    esam1 = next(p.config for p in points if p.label == "esam1")
    assert esam1.budget.match_optimizer == "tsam"
    assert grad_evals_per_step("tsam", **tsam.optimizer.settings) == 3 * grad_evals_per_step(
        esam1.optimizer.name, **esam1.optimizer.settings)
    quick = compare_config(quick=True)
    assert quick.seeds == [0] and quick.base["data"]["limit"] and quick.out_dir == "results/compare-quick"


def test_verdict_speaks_from_the_paired_intervals():
    summary = {"sam": {"reference": "sam", "paired": {}},
               "sgd": {"reference": "sam", "paired": {
                   "final_test_acc": {"mean": -0.05, "low": -0.08, "high": -0.02, "n": 3, "verdict": "worse"},
                   "best_val_test_acc": {"mean": 0.001, "low": -0.01, "high": 0.012, "n": 3, "verdict": "inside noise"}}},
               "tsam": {"reference": "sam", "paired": {
                   "final_test_acc": {"mean": 0.014, "low": 0.002, "high": 0.026, "n": 3, "verdict": "better"},
                   "best_val_test_acc": {"mean": 0.004, "low": None, "high": None, "n": 1, "verdict": "n<2"}}}}
    text = verdict(summary)
    assert ("By final-epoch test accuracy: TSAM − SAM = +1.40 points (95% CI [+0.20, +2.60], n=3): TSAM is better; "
            "SGD − SAM = -5.00 points (95% CI [-8.00, -2.00], n=3): SGD is worse.") in text
    assert "TSAM − SAM = +0.40 points (n=1 seed: no interval, not a result)" in text
    assert "SGD − SAM = +0.10 points (95% CI [-1.00, +1.20], n=3): inside the noise" in text
    assert "TSAM is the reference" in verdict({"tsam": {"reference": "tsam", "paired": {}}})


def test_compare_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    # --quick with an even smaller subset, two worker processes (the spawn pool path)
    code = main(["compare", "--quick", "--out", str(out), "--workers", "2", "--no-progress",
                 "--set", "base.data.limit=300"])
    assert code == 0
    printed = capsys.readouterr().out
    for label in COMPARE_LABELS:
        assert f"| {label} |" in printed
    assert "## Verdict" in printed and "TSAM" in printed
    for name in ("report.md", "accuracy.csv", "cost.csv", "runs.csv", "convergence.png", "sweep.db"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "accuracy_vs_t.png").exists()  # tilt="auto": no t-curve
    assert "accuracy_vs_t.png" not in (out / "report.md").read_text()  # no link to a figure not drawn
    assert "## Paired differences against sam" in printed and "TSAM − SAM" in printed
    with open(out / "cost.csv") as handle:
        cost = {row["optimizer"]: row for row in csv.DictReader(handle)}
    assert cost["esam1"]["grad_evals"] == cost["tsam"]["grad_evals"]
    assert int(cost["esam1"]["steps"]) == 3 * int(cost["sam"]["steps"])
    db = sqlite3.connect(out / "sweep.db")
    results = {label: json.loads(r) for label, r in db.execute("SELECT label, result FROM runs")}
    assert set(results) == set(COMPARE_LABELS)
    assert all({"final_test_acc", "best_val_test_acc", "wall_seconds"} <= set(r) for r in results.values())
    # a second call finds everything done and only rewrites the report
    assert main(["compare", "--quick", "--out", str(out), "--workers", "2", "--no-progress",
                 "--set", "base.data.limit=300"]) == 0
    assert db.execute("SELECT MAX(attempts) FROM runs").fetchone()[0] == 1


@pytest.mark.slow
def test_compare_quick_as_shipped(tmp_path, capsys):
    assert main(["compare", "--quick", "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    assert "| tsam |" in capsys.readouterr().out
