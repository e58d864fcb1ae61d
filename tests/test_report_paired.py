"""Report and compare: paired per-seed differences (hand-computed), numeric CSVs in percent, one-seed
rows without a fake "± 0.00", mean ESS per optimizer, the t-plot only for several tilts, and the
sweep's progress output (one line per finished run, no carriage returns in a redirected log)."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tiltedsam.harness.compare import verdict
from tiltedsam.harness.report import build_report, write_report
from tiltedsam.harness.rundir import RESULT_FORMAT, write_metrics, write_result
from tiltedsam.harness.sweep import SweepConfig, expand_grid, open_database, register_points, run_sweep

# per-seed test accuracies (fractions) of a made-up comparison
FINAL = {"sgd": [0.80, 0.78, 0.83], "sam": [0.90, 0.92, 0.94], "tsam": [0.91, 0.94, 0.95]}
BEST = {"sgd": [0.85, 0.84, 0.86], "sam": [0.93, 0.93, 0.94], "tsam": [0.95, 0.96, 0.97]}


def fake_database(out, seeds=(0, 1, 2), labels=("sgd", "sam", "tsam"), ess=2.997, tilts=None):
    """A sweep database whose runs are 'done' with the results above (no training); with ``tilts``
    TSAM is run at each tilt, its accuracy shifted by -0.01 per tilt index."""
    sweep = SweepConfig(name="fake", out_dir=str(out), optimizers=list(labels), seeds=list(seeds), progress=False,
                        base={"data": {"name": "digits", "label_noise": 0.2}, "model": {"name": "mlp"},
                              "budget": {"kind": "epochs", "amount": 2}},
                        per_optimizer={"tsam": {"t": list(tilts)}} if tilts else {})
    points = expand_grid(sweep)
    connection = open_database(out, create=True)
    register_points(connection, points)
    for p in points:
        i = list(seeds).index(p.seed)
        shift = 0.01 * tilts.index(p.setting["optimizer.settings.tilt"]) if tilts and p.label == "tsam" else 0.0
        final, best = FINAL[p.label][i] - shift, BEST[p.label][i] - shift
        result = {"final_test_acc": final, "best_val_test_acc": best, "best_val_acc": best - 0.01,
                  "best_val_epoch": 1, "grad_evals": 100, "grad_evals_per_step": 1, "steps": 100, "epochs": 2,
                  "train_seconds": 1.0 + i, "wall_seconds": 2.0, "threads": 1}
        epochs = [{"epoch": e, "grad_evals": 50 * e, "test_acc": final, "val_acc": best, "train_loss": 1.0 / e,
                   "train_loss_at_theta": 0.9 / e, "train_objective": 1.1 / e,
                   "effective_sample_size": ess if p.label == "tsam" else 1.0} for e in (1, 2)]
        Path(p.config.run.out_dir).mkdir(parents=True)
        write_result(p.config.run.out_dir, {"format": RESULT_FORMAT, **result})
        write_metrics(p.config.run.out_dir, epochs)
        connection.execute("UPDATE runs SET status='done' WHERE run_key=?", (p.key,))
    connection.close()
    return sweep


def test_paired_differences_against_sam_match_a_hand_computed_t_interval(tmp_path):
    fake_database(tmp_path / "db")
    report = write_report(tmp_path / "db")
    # TSAM - SAM, final: d = [0.01, 0.02, 0.01], mean 0.013333, s_d = 0.0057735,
    # t_{0.975, 2} = 4.302653 -> half-width 4.302653 * 0.0057735 / sqrt(3) = 0.0143422
    d = report.summary["tsam"]["paired"]["final_test_acc"]
    assert d["mean"] == pytest.approx(0.0133333, abs=1e-6)
    assert (d["low"], d["high"]) == (pytest.approx(-0.0010089, abs=1e-6), pytest.approx(0.0276755, abs=1e-6))
    assert d["n"] == 3
    # The table's four comparisons are one Holm family. With 2 degrees of freedom the two-sided p of a
    # paired t statistic T is 1 - |T| / sqrt(T² + 2): TSAM final T = 4.0 -> 0.057191; TSAM best-val T = 8.0
    # -> 0.015268; SGD final (d = [-.10, -.14, -.11]) T = 9.70725 -> 0.010447; SGD best-val T = 25 -> 0.001596.
    # Holm: 4 x 0.001596 = 0.006385, 3 x 0.010447 = 0.031341, max(2 x 0.015268, 0.031341), 0.057191.
    assert d["p"] == pytest.approx(0.057191, abs=1e-5) and d["holm_p"] == pytest.approx(0.057191, abs=1e-5)
    assert d["verdict"] == "not detected" and d["mde"] > abs(d["mean"])  # a gap this n could not see
    # best-val: d = [0.02, 0.03, 0.03], mean 0.026667, s_d 0.0057735 -> [+0.0123, +0.0410]: better
    d = report.summary["tsam"]["paired"]["best_val_test_acc"]
    assert d["low"] == pytest.approx(0.0123245, abs=1e-6) and d["verdict"] == "better"
    assert d["holm_p"] == pytest.approx(0.031341, abs=1e-5)
    sgd = report.summary["sgd"]["paired"]
    assert sgd["final_test_acc"]["holm_p"] == pytest.approx(0.031341, abs=1e-5)
    assert sgd["best_val_test_acc"]["holm_p"] == pytest.approx(0.006385, abs=1e-5)
    assert report.summary["sam"]["paired"] == {} and report.summary["sam"]["reference"] == "sam"
    assert ("| tsam − sam | 3 | +1.33 [-0.10, +2.77] | not detected (Holm p 0.057; MDE "
            in report.markdown)
    assert "| +2.67 [+1.23, +4.10] | better (Holm p 0.031) |" in report.markdown
    text = verdict(report.summary)
    assert "TSAM − SAM = +1.33 points (95% CI [-0.10, +2.77], n=3): not detected (Holm p 0.057;" in text
    assert "TSAM − SAM = +2.67 points (95% CI [+1.23, +4.10], n=3): TSAM is better (Holm p 0.031)" in text
    assert "SGD − SAM = -11.67 points" in text and "SGD is worse (Holm p 0.031)" in text

    # the CSV is numeric, in percent, one row per optimizer and measure
    with open(tmp_path / "db" / "accuracy.csv") as handle:
        rows = {(r["optimizer"], r["measure"]): r for r in csv.DictReader(handle)}
    tsam = rows[("tsam", "final_test_acc")]
    assert float(tsam["mean"]) == pytest.approx(93.3333, abs=1e-3) and int(tsam["n"]) == 3
    assert float(tsam["std"]) == pytest.approx(100 * 0.0208167, abs=1e-3)
    assert float(tsam["diff_mean"]) == pytest.approx(1.3333, abs=1e-3)
    assert float(tsam["diff_low"]) == pytest.approx(-0.1009, abs=1e-3) and tsam["reference"] == "sam"
    assert rows[("sam", "final_test_acc")]["diff_mean"] == ""  # the reference has no difference to itself
    for row in rows.values():
        float(row["mean"])
        float(row["std"])
    # mean ESS of TSAM shown with s, and the uniform-weights diagnostic
    assert "2.997 / 3" in report.markdown and "the tilt has no effect" in report.markdown
    assert not (tmp_path / "db" / "accuracy_vs_t.png").exists()  # one tilt: no curve through a point
    assert (tmp_path / "db" / "convergence.png").stat().st_size > 0


def test_reference_can_be_chosen_and_must_exist(tmp_path):
    fake_database(tmp_path / "db")
    report = build_report(tmp_path / "db", reference="sgd")
    assert report.summary["tsam"]["paired"]["final_test_acc"]["mean"] == pytest.approx(0.13, abs=1e-9)
    with pytest.raises(ValueError, match="reference optimizer 'esam1' has no finished runs"):
        build_report(tmp_path / "db", reference="esam1")
    fake_database(tmp_path / "nosam", labels=("sgd", "tsam"))
    assert build_report(tmp_path / "nosam").summary["tsam"]["reference"] == "sgd"  # no SAM: the first label


def test_one_seed_shows_n_1_not_a_zero_spread(tmp_path):
    fake_database(tmp_path / "db", seeds=(0,))
    report = write_report(tmp_path / "db")
    assert "± 0.00" not in report.markdown
    assert "91.00 (n=1)" in report.markdown
    assert "(n=1, no interval)" in report.markdown
    assert "n=1 seed: no interval, not a result" in verdict(report.summary)
    with open(tmp_path / "db" / "accuracy.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["optimizer"] == "tsam")
    assert row["n"] == "1" and row["std"] == "" and row["diff_low"] == "" and math.isclose(float(row["mean"]), 91.0)


def test_sweep_prints_one_line_per_run_and_no_carriage_returns_when_not_a_terminal(tmp_path, capsys):
    sweep = SweepConfig(name="log", out_dir=str(tmp_path / "s"), optimizers=["sgd"], seeds=[0, 1], progress=True,
                        base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                              "budget": {"kind": "epochs", "amount": 1}, "run": {"num_threads": 1}})
    assert run_sweep(sweep)["done"] == 2
    captured = capsys.readouterr()  # pytest's capture is not a terminal, like a redirected log
    assert "\r" not in captured.out + captured.err
    lines = [line for line in captured.out.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and lines[0].startswith("[1/2] sgd seed ") and lines[1].startswith("[2/2] sgd seed ")
    assert "final test acc" in lines[0] and "1 thread(s)" in lines[0]


def test_the_t_plot_exists_only_for_several_tilts(tmp_path):
    fake_database(tmp_path / "db", tilts=[20.0, 1.0, 100.0])
    report = write_report(tmp_path / "db")
    assert (tmp_path / "db" / "accuracy_vs_t.png").stat().st_size > 0
    assert [t for t, _ in report.by_t["tsam"]] == [1.0, 20.0, 100.0]
    assert report.summary["tsam"]["setting"] == {"optimizer.settings.tilt": 20.0}  # best validation accuracy
    with open(tmp_path / "db" / "accuracy_by_t.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["measure"] == "best_val_test_acc"]
    assert [(float(r["t"]), float(r["mean"])) for r in rows] == [(1.0, pytest.approx(95.0)), (20.0, pytest.approx(96.0)),
                                                               (100.0, pytest.approx(94.0))]
    assert all(float(r["mean_ess"]) == pytest.approx(2.997) for r in rows)


def test_a_schema_2_database_without_run_directories_is_reported_from_its_own_copies(tmp_path):
    """Before schema 3 the database also copied each run's result and epochs; such a database still
    reports, from those copies, when its run directories are gone."""
    from tiltedsam.harness.config import load_config, to_dict
    from tiltedsam.harness.sweep import _RUNS_TABLE_V2

    db = sqlite3.connect(tmp_path / "sweep.db")
    db.executescript(f"""{_RUNS_TABLE_V2};
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE epochs (run_key TEXT NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
                             PRIMARY KEY (run_key, epoch));
        INSERT INTO meta VALUES ('schema_version', '2'), ('package_version', '0.1.0');""")
    for label in ("sgd", "sam"):
        config = json.dumps(to_dict(load_config(None, ["data.name=digits", f"optimizer.name={label}"])))
        for seed in (0, 1):
            key = f"{label}{seed}"
            result = {"final_test_acc": FINAL[label][seed], "best_val_test_acc": BEST[label][seed],
                      "best_val_acc": 0.5, "best_val_epoch": 1, "grad_evals": 10, "grad_evals_per_step": 1,
                      "steps": 10, "epochs": 1, "train_seconds": 1.0, "wall_seconds": 1.0}
            db.execute("INSERT INTO runs (run_key, label, optimizer, seed, setting, config, run_dir, status, result) "
                       "VALUES (?, ?, ?, ?, '{}', ?, ?, 'done', ?)",
                       (key, label, label, seed, config, str(tmp_path / "gone" / key), json.dumps(result)))
            db.execute("INSERT INTO epochs VALUES (?, 1, ?)", (key, json.dumps({"epoch": 1, "grad_evals": 10,
                                                                                "test_acc": FINAL[label][seed]})))
    db.commit()
    db.close()
    report = build_report(tmp_path)
    assert report.summary["sgd"]["final_test_acc"][0] == pytest.approx(np.mean(FINAL["sgd"][:2]))
    assert report.curves["sam"]["test_acc"] == [[FINAL["sam"][0]], [FINAL["sam"][1]]]
