"""``tiltedsam report`` on a database a user edited or a tool damaged: rows it cannot read are named
and skipped, out-of-range values are never averaged, and the report says so."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.report import build_report
from tiltedsam.harness.sweep import SweepConfig, run_sweep


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "s"
    sweep = SweepConfig(name="s", out_dir=str(out), optimizers=["sgd"], seeds=[0, 1], progress=False,
                        base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                              "budget": {"amount": 1}, "run": {"num_threads": 1}})
    assert run_sweep(sweep)["done"] == 2
    return out


DAMAGE = {
    "result NULL": ("UPDATE runs SET result=NULL WHERE seed=1", "result is NULL"),
    "result {}": ("UPDATE runs SET result='{}' WHERE seed=1", "result.final_test_acc = None"),
    "accuracy abc": ("UPDATE runs SET result=json_set(result, '$.final_test_acc', 'abc') WHERE seed=1",
                     "result.final_test_acc = 'abc'"),
    "accuracy 1e308": ("UPDATE runs SET result=json_set(result, '$.best_val_test_acc', 1e308) WHERE seed=1",
                       "result.best_val_test_acc = 1e+308"),
    "accuracy 5.0": ("UPDATE runs SET result=json_set(result, '$.final_test_acc', 5.0) WHERE seed=1",
                     "result.final_test_acc = 5.0 (allowed: a fraction in [0, 1])"),
    "setting [1,2]": ("UPDATE runs SET setting='[1,2]' WHERE seed=1", "setting is list"),
    "config {}": ("UPDATE runs SET config='{}' WHERE seed=1", "config is not a valid run config"),
    "config not JSON": ("UPDATE runs SET config='{oops' WHERE seed=1", "config is not valid JSON"),
    "epoch metrics []": ("UPDATE epochs SET metrics='[]' WHERE run_key=(SELECT run_key FROM runs WHERE seed=1)",
                         "epoch row(s) whose metrics are not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_rows_are_named_and_skipped(sweep_dir, tmp_path, case):
    copy = tmp_path / "s"
    shutil.copytree(sweep_dir, copy)
    statement, expected = DAMAGE[case]
    connection = sqlite3.connect(copy / "sweep.db")
    connection.execute(statement)
    connection.commit()
    connection.close()
    report = build_report(copy)
    assert len(report.skipped) == 1 and expected in report.skipped[0], report.skipped
    assert "## Skipped database rows" in report.markdown and expected.split(" (")[0] in report.markdown
    if case != "epoch metrics []":  # the damaged run is in no table: one seed left
        assert report.tables["runs"][1][0][1] == 0 and len(report.tables["runs"][1]) == 1
    assert "%" in report.markdown and "285.65" not in report.markdown


def test_report_command_warns_about_skipped_rows(sweep_dir, tmp_path, capsys):
    copy = tmp_path / "s"
    shutil.copytree(sweep_dir, copy)
    connection = sqlite3.connect(copy / "sweep.db")
    connection.execute("UPDATE runs SET result='{}' WHERE seed=1")
    connection.commit()
    connection.close()
    assert main(["report", str(copy), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("warning: 1 unreadable database row(s) skipped")


def test_all_rows_unreadable_is_one_error_line(sweep_dir, tmp_path, capsys):
    copy = tmp_path / "s"
    shutil.copytree(sweep_dir, copy)
    connection = sqlite3.connect(copy / "sweep.db")
    connection.execute("UPDATE runs SET result='[]', setting='x' WHERE 1")
    connection.commit()
    connection.close()
    with pytest.raises(SystemExit) as raised:
        main(["report", str(copy), "--out", str(tmp_path / "r")])
    text = str(raised.value.code)
    assert text.startswith("error: ") and "no finished runs" in text and "2 unreadable row(s) skipped" in text


def test_a_failed_row_with_an_unreadable_setting_is_still_listed(sweep_dir, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(sweep_dir, copy)
    connection = sqlite3.connect(copy / "sweep.db")
    connection.execute("UPDATE runs SET status='failed', setting='{oops', error=NULL WHERE seed=1")
    connection.commit()
    connection.close()
    report = build_report(copy)
    assert "## Failed runs" in report.markdown and report.skipped == []
