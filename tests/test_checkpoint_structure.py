"""A checkpoint with a valid checksum but the wrong structure, and a checkpoint write that fails.

``save_checkpoint`` checksums whatever it is given, so a payload edited and re-saved through it
passes the checksum: the structure is checked against the run on ``--resume`` (and for
``analyze``), one ``error:`` line each, and nothing is trained from it. A write that hits a full
disk or a file-size limit ends in one line naming the file; the previous checkpoint is intact.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tiltedsam.cli import main
from tiltedsam.harness.checkpoints import load_checkpoint, save_checkpoint

TINY = ["--set", "data.name=digits", "--set", "data.limit=200", "--set", "model.name=mlp",
        "--set", "budget.amount=3", "--set", "run.progress=false", "--set", "run.num_threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", *TINY, "--out", str(out), "--stop-after-epochs", "1"]) == 3
    return out


def _edited(stopped, tmp_path, edit):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    payload = load_checkpoint(run)
    for key in ("format", "package_version", "checksum"):
        payload.pop(key)
    edit(payload)
    save_checkpoint(run / "checkpoint.pt", payload)  # a valid checksum over the edited payload
    return run


def _first_weight(payload):
    name = next(iter(payload["model"]))
    payload["model"][name] = torch.zeros(3, 3)


EDITS = {
    "wrong weight shape": _first_weight,
    "no rng": lambda p: p.pop("rng"),
    "epoch one": lambda p: p.update(epoch="one"),
    "bad rng state": lambda p: p["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
    "a million steps": lambda p: p.update(step=10**6),
    "metrics not a list": lambda p: p.update(metrics="[]"),
    "negative seconds": lambda p: p.update(train_seconds=-1.0),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_resume_from_a_wrongly_structured_checkpoint_is_one_error_line(stopped, tmp_path, capsys, case):
    run = _edited(stopped, tmp_path, EDITS[case])
    try:
        code = main(["train", "--resume", "--out", str(run)])
        err = capsys.readouterr().err.strip()
    except SystemExit as exc:  # the command's own one-line exit (printed the same way by Python)
        code, err = 1, str(exc.code)
    assert code == 1 and err.startswith("error: checkpoint") and "\n" not in err, (code, err)
    assert "does not fit this run" in err
    assert not (run / "result.json").exists()


METRICS_DAMAGE = {  # the epochs a resumed run continues from live in metrics.csv, not in the checkpoint
    "not numbers": (lambda f: f.write_text("epoch,test_acc\nabc,0.5\n"), "cannot be read"),
    "not UTF-8": (lambda f: f.write_bytes(b"epoch\n\xff\xfe\n"), "cannot be read"),
    "removed": (lambda f: f.unlink(), "holds 0 epoch(s), but the checkpoint is of epoch 1"),
}


@pytest.mark.parametrize("case", sorted(METRICS_DAMAGE))
def test_resume_with_a_damaged_metrics_file_is_one_error_line(stopped, tmp_path, capsys, case):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    damage, expected = METRICS_DAMAGE[case]
    damage(run / "metrics.csv")
    try:
        code = main(["train", "--resume", "--out", str(run)])
        err = capsys.readouterr().err.strip()
    except SystemExit as exc:
        code, err = 1, str(exc.code)
    assert code == 1 and err.startswith("error: ") and "\n" not in err, (code, err)
    assert "metrics.csv" in err and expected in err, err
    assert not (run / "result.json").exists()


def test_analyze_of_a_checkpoint_with_a_wrong_weight_is_one_error_line(stopped, tmp_path, capsys):
    run = _edited(stopped, tmp_path, _first_weight)
    with pytest.raises(SystemExit) as raised:
        main(["analyze", str(run), "--out", str(tmp_path / "a")])
    assert str(raised.value.code).startswith("error: analyze: checkpoint") and "do not fit" in str(raised.value.code)


def test_a_checkpoint_write_beyond_the_file_size_limit_is_one_line_and_keeps_the_old_one(stopped, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    before = (run / "checkpoint.pt").read_bytes()
    limit = len(before) // 2  # config, metrics and run.json fit; the checkpoint does not
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from tiltedsam.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "train", "--resume", "--out", str(run)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 1 and "\n" not in err, err
    assert err.startswith(f"error: cannot write checkpoint {str(run / 'checkpoint.pt')!r}") and "ulimit -f" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".checkpoint.pt.")]  # no temporary left
