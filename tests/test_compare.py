"""The main job ``tiltedsam compare``: configuration, ESAM1's budget, and an end-to-end --quick run."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.compare import COMPARE_LABELS, compare_config, verdict
from tiltedsam.harness.rundir import read_result
from tiltedsam.harness.sweep import expand_grid
from tiltedsam.harness.train import resolve_budget
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
    assert grad_evals_per_step("tsam", **tsam.optimizer.settings) == 3 * grad_evals_per_step(
        esam1.optimizer.name, **esam1.optimizer.settings)
    # ESAM1 spends TSAM's gradient evaluations: three times TSAM's steps
    esam1_budget, tsam_budget = resolve_budget(esam1, steps_per_epoch=10), resolve_budget(tsam, steps_per_epoch=10)
    assert esam1_budget.total_grad_evals == tsam_budget.total_grad_evals
    assert esam1_budget.total_steps == 3 * tsam_budget.total_steps
    quick = compare_config(quick=True)
    assert quick.seeds == [0] and quick.base["data"]["limit"] and quick.out_dir == "results/compare-quick"


def test_verdict_speaks_from_the_paired_intervals():
    summary = {"sam": {"reference": "sam", "paired": {}},
               "sgd": {"reference": "sam", "paired": {
                   "final_test_acc": {"mean": -0.05, "low": -0.08, "high": -0.02, "n": 3, "verdict": "worse",
                                      "holm_p": 0.02},
                   "best_val_test_acc": {"mean": 0.001, "low": -0.01, "high": 0.012, "n": 3,
                                         "verdict": "not detected", "holm_p": 0.9, "mde": 0.021}}},
               "tsam": {"reference": "sam", "paired": {
                   "final_test_acc": {"mean": 0.014, "low": 0.002, "high": 0.026, "n": 3, "verdict": "better",
                                      "holm_p": 0.04},
                   "best_val_test_acc": {"mean": 0.004, "low": None, "high": None, "n": 1, "verdict": "n<2"}}}}
    text = verdict(summary)
    assert ("By final-epoch test accuracy: TSAM − SAM = +1.40 points (95% CI [+0.20, +2.60], n=3): TSAM is better "
            "(Holm p 0.04); SGD − SAM = -5.00 points (95% CI [-8.00, -2.00], n=3): SGD is worse (Holm p 0.02).") in text
    assert "TSAM − SAM = +0.40 points (n=1 seed: no interval, not a result)" in text
    assert ("SGD − SAM = +0.10 points (95% CI [-1.00, +1.20], n=3): not detected (Holm p 0.9; this many seeds "
            "detect gaps of about 2.1 points)") in text
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
    assert not (out / "accuracy_vs_t.png").exists()  # one fixed t: no t-curve
    assert "accuracy_vs_t.png" not in (out / "report.md").read_text()  # no link to a figure not drawn
    assert "## Paired differences against sam" in printed and "TSAM − SAM" in printed
    with open(out / "cost.csv") as handle:
        cost = {row["optimizer"]: row for row in csv.DictReader(handle)}
    assert cost["esam1"]["grad_evals"] == cost["tsam"]["grad_evals"]
    assert int(cost["esam1"]["steps"]) == 3 * int(cost["sam"]["steps"])
    db = sqlite3.connect(out / "sweep.db")
    results = {label: read_result(run_dir) for label, run_dir in db.execute("SELECT label, run_dir FROM runs")}
    assert set(results) == set(COMPARE_LABELS)
    # one home per fact: the index holds no epochs or results; runs.csv leaves ESS empty without weights
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {"meta", "runs"}
    with open(out / "runs.csv", newline="") as handle:
        ess = {row["optimizer"]: row["mean_ess"] for row in csv.DictReader(handle)}
    assert ess["sgd"] == ess["sam"] == ess["esam1"] == "" and 1.0 <= float(ess["tsam"]) <= 3.0
    assert b"\r\n" not in (out / "runs.csv").read_bytes() + (out / "accuracy.csv").read_bytes()
    assert all({"final_test_acc", "best_val_test_acc", "wall_seconds"} <= set(r) for r in results.values())
    # a second call finds everything done and only rewrites the report
    assert main(["compare", "--quick", "--out", str(out), "--workers", "2", "--no-progress",
                 "--set", "base.data.limit=300"]) == 0
    assert db.execute("SELECT MAX(attempts) FROM runs").fetchone()[0] == 1


@pytest.mark.slow
def test_compare_quick_as_shipped(tmp_path, capsys):
    assert main(["compare", "--quick", "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    assert "| tsam |" in capsys.readouterr().out


def test_compare_help_is_generated_from_the_job_constants(monkeypatch, capsys):
    """The help text cannot drift from the job: change a constant, and the help and the job follow."""
    from tiltedsam.harness import compare as job

    monkeypatch.setattr(job, "DEFAULT_SEEDS", 7)
    monkeypatch.setattr(job, "DEFAULT_EPOCHS", 4)
    monkeypatch.setattr(job, "TSAM_SETTINGS", {**job.TSAM_SETTINGS, "num_samples": 6})
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "7 seeds, 4 epochs" in text and "default 7" in text and "default 4" in text
    assert f"tilt={job.CALIBRATED_TILT}" in text and "num_samples=6" in text and "t=20" not in text
    sweep = job.compare_config()
    assert len(sweep.seeds) == 7 and sweep.base["budget"]["amount"] == 4
    assert sweep.variants["tsam"]["optimizer.settings"]["num_samples"] == 6


def test_compare_runs_a_fixed_tilt_and_the_papers_is_one_flag_away(capsys):
    """The job's TSAM optimises L^t at a stated fixed t (not the auto rule); --tilt picks another t or the rule."""
    from tiltedsam.harness import compare as job

    settings = lambda sweep: sweep.variants["tsam"]["optimizer.settings"]  # noqa: E731
    assert settings(job.compare_config())["tilt"] == job.CALIBRATED_TILT > 0
    assert settings(job.compare_config(tilt=20.0))["tilt"] == 20.0
    assert settings(job.compare_config(tilt="auto"))["tilt"] == "auto"
    with pytest.raises(SystemExit):
        main(["compare", "--tilt", "twenty"])
    err = capsys.readouterr().err
    assert "--tilt" in err and "'twenty'" in err
