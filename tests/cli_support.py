"""Helpers of the harness and CLI tests (not tests themselves): the tiny CLI run, strict JSON, and
the one-line error a failing command must print."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tiltedsam.cli import main


class RunsAShellCommand:
    """Unpickling it runs a shell command: the classic code-carrying pickle payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


TINY = ["--set", "data.name=digits", "--set", "data.limit=200", "--set", "model.name=mlp",
        "--set", "budget.amount=2", "--set", "run.progress=false", "--set", "run.num_threads=1"]


def strict_json(text: str):
    """json.loads that fails on NaN/Infinity (what every other JSON reader does)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def stopped_run(tmp_path: Path) -> Path:
    """A real run directory stopped after epoch 1 (checkpoint, config.json, metrics.csv)."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--stop-after-epochs", "1"]) == 3
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def cli_error(argv, capsys) -> str:
    """Run the command; it must fail with exit status 1 and one line ``error: ...`` (printed by the
    central handler, or a command's own ``SystemExit("error: ...")``, which Python prints the same way)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        text = str(exc.code)
        assert text.startswith("error: ") and "\n" not in text, (argv, text)
        return text
    assert code == 1, (argv, code)
    return one_error_line(capsys)
