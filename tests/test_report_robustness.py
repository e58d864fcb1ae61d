"""``tiltedsam report`` on a sweep a user edited or a tool damaged: index rows and run files it cannot
read are named and skipped, out-of-range values are never averaged, and the report says so.

A run's result lives in its run directory's ``result.json`` and its epochs in ``metrics.csv``; the
database only indexes them (setting, config, run directory). Each case damages one of those places
for seed 1."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.report import build_report
from tiltedsam.harness.rundir import RESULT_FORMAT
from tiltedsam.harness.sweep import SweepConfig, run_sweep


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "s"
    sweep = SweepConfig(name="s", out_dir=str(out), optimizers=["sgd"], seeds=[0, 1], progress=False,
                        base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                              "budget": {"amount": 1}, "run": {"num_threads": 1}})
    assert run_sweep(sweep)["done"] == 2
    return out


def _copy(sweep_dir, tmp_path):
    """A copy of the sweep whose index points at the copy's own run directories; returns (copy, the
    run directory of seed 1)."""
    copy = tmp_path / "s"
    shutil.copytree(sweep_dir, copy)
    _sql(copy, "UPDATE runs SET run_dir = replace(run_dir, ?, ?)", (str(sweep_dir), str(copy)))
    connection = sqlite3.connect(copy / "sweep.db")
    (run_dir,) = connection.execute("SELECT run_dir FROM runs WHERE seed=1").fetchone()
    connection.close()
    assert run_dir.startswith(str(copy))
    return copy, copy / run_dir[len(str(copy)) + 1:]


def _sql(copy, statement, parameters=()):
    connection = sqlite3.connect(copy / "sweep.db")
    connection.execute(statement, parameters)
    connection.commit()
    connection.close()


def _edit_result(run_dir, **fields):
    file = run_dir / "result.json"
    result = json.loads(file.read_text())
    file.write_text(json.dumps({**result, **fields}))


DAMAGE = {  # case -> (damage(copy, run_dir), expected text of the skipped line)
    "result.json removed": (lambda copy, run: (run / "result.json").unlink(), "has no result.json"),
    "result.json not JSON": (lambda copy, run: (run / "result.json").write_text("{oops"),
                             "not a readable result file"),
    "result.json []": (lambda copy, run: (run / "result.json").write_text("[]"), "has format 'list'"),
    "result {}": (lambda copy, run: (run / "result.json").write_text(json.dumps({"format": RESULT_FORMAT})),
                  "result.final_test_acc = None"),
    "accuracy abc": (lambda copy, run: _edit_result(run, final_test_acc="abc"), "result.final_test_acc = 'abc'"),
    "accuracy 1e308": (lambda copy, run: _edit_result(run, best_val_test_acc=1e308),
                       "result.best_val_test_acc = 1e+308"),
    "accuracy 5.0": (lambda copy, run: _edit_result(run, final_test_acc=5.0),
                     "result.final_test_acc = 5.0 (allowed: a fraction in [0, 1])"),
    "setting [1,2]": (lambda copy, run: _sql(copy, "UPDATE runs SET setting='[1,2]' WHERE seed=1"), "setting is list"),
    "config {}": (lambda copy, run: _sql(copy, "UPDATE runs SET config='{}' WHERE seed=1"),
                  "config is not a valid run config"),
    "config not JSON": (lambda copy, run: _sql(copy, "UPDATE runs SET config='{oops' WHERE seed=1"),
                        "config is not valid JSON"),
    "run_dir a blob": (lambda copy, run: _sql(copy, "UPDATE runs SET run_dir=x'ff' WHERE seed=1"),
                       "run_dir is b'\\xff', not a path"),
    "metrics.csv not numbers": (lambda copy, run: (run / "metrics.csv").write_text("epoch,test_acc\nabc,0.5\n"),
                                "metrics.csv' cannot be read"),
    "metrics.csv not UTF-8": (lambda copy, run: (run / "metrics.csv").write_bytes(b"epoch\n\xff\xfe\n"),
                              "metrics.csv' cannot be read"),
}
KEEPS_THE_RUN = {"metrics.csv not numbers", "metrics.csv not UTF-8"}  # only its curves are missing


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_rows_and_files_are_named_and_skipped(sweep_dir, tmp_path, case):
    copy, run_dir = _copy(sweep_dir, tmp_path)
    damage, expected = DAMAGE[case]
    damage(copy, run_dir)
    report = build_report(copy)
    assert len(report.skipped) == 1 and expected in report.skipped[0], report.skipped
    assert "## Skipped database rows" in report.markdown and expected.split(" (")[0] in report.markdown
    if case in KEEPS_THE_RUN:
        assert len(report.tables["runs"][1]) == 2
        assert sorted(len(series) for series in report.curves["sgd"]["test_acc"]) == [0, 1]
    else:  # the damaged run is in no table: one seed left
        assert report.tables["runs"][1][0][1] == 0 and len(report.tables["runs"][1]) == 1
    assert "%" in report.markdown and "500.00" not in report.markdown


def test_report_command_warns_about_skipped_rows(sweep_dir, tmp_path, capsys):
    copy, run_dir = _copy(sweep_dir, tmp_path)
    (run_dir / "result.json").write_text(json.dumps({"format": RESULT_FORMAT}))
    assert main(["report", str(copy), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("warning: 1 unreadable database row(s) skipped")


def test_all_rows_unreadable_is_one_error_line(sweep_dir, tmp_path, capsys):
    copy, _ = _copy(sweep_dir, tmp_path)
    _sql(copy, "UPDATE runs SET setting='x' WHERE 1")
    with pytest.raises(SystemExit) as raised:
        main(["report", str(copy), "--out", str(tmp_path / "r")])
    text = str(raised.value.code)
    assert text.startswith("error: ") and "no finished runs" in text and "2 unreadable row(s) skipped" in text


def test_a_failed_row_with_an_unreadable_setting_is_still_listed(sweep_dir, tmp_path):
    copy, _ = _copy(sweep_dir, tmp_path)
    _sql(copy, "UPDATE runs SET status='failed', setting='{oops', error=NULL WHERE seed=1")
    report = build_report(copy)
    assert "## Failed runs" in report.markdown and report.skipped == []


def test_a_schema_2_database_copy_is_checked_like_a_result_file(tmp_path):
    """A schema-2 database kept its own copy of each result (used when the run directory is gone);
    a damaged copy is named and skipped like a damaged result.json."""
    from tiltedsam.harness.config import load_config, to_dict
    from tiltedsam.harness.sweep import _RUNS_TABLE_V2

    db = sqlite3.connect(tmp_path / "sweep.db")
    db.executescript(f"""{_RUNS_TABLE_V2};
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE epochs (run_key TEXT NOT NULL, epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
                             PRIMARY KEY (run_key, epoch));
        INSERT INTO meta VALUES ('schema_version', '2'), ('package_version', '0.1.0');""")
    config = json.dumps(to_dict(load_config(None, ["data.name=digits", "optimizer.name=sgd"])))
    good = {"final_test_acc": 0.9, "best_val_test_acc": 0.9, "best_val_acc": 0.5, "best_val_epoch": 1,
            "grad_evals": 10, "grad_evals_per_step": 1, "steps": 10, "epochs": 1, "train_seconds": 1.0,
            "wall_seconds": 1.0}
    for seed, result in ((0, json.dumps(good)), (1, json.dumps({**good, "final_test_acc": 5.0})), (2, None)):
        db.execute("INSERT INTO runs (run_key, label, optimizer, seed, setting, config, run_dir, status, result) "
                   "VALUES (?, 'sgd', 'sgd', ?, '{}', ?, ?, 'done', ?)",
                   (f"k{seed}", seed, config, str(tmp_path / "gone" / str(seed)), result))
        db.execute("INSERT INTO epochs VALUES (?, 1, ?)", (f"k{seed}", "[]" if seed == 0 else '{"epoch": 1}'))
    db.commit()
    db.close()
    report = build_report(tmp_path)
    assert [r[1] for r in report.tables["runs"][1]] == [0]
    assert len(report.skipped) == 3, report.skipped
    assert "result.final_test_acc = 5.0" in report.skipped[0] and "has no result.json" in report.skipped[1]
    assert "1 epoch row(s) whose metrics are not a JSON object" in report.skipped[2]
