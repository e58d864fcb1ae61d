"""Checkpoints are data, never code: a pickled payload is refused before it runs, flipped bytes and a
changed weight fail the checksum, a write killed half-way leaves the old file (its temporary is
removed by the next resume or save), every optimizer's state is checkpoint data, resume is exact."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from cli_support import ENV, RunsAShellCommand, cli_error, stopped_run
from tiltedsam.cli import main
from tiltedsam.harness.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from tiltedsam.harness.config import load_config
from tiltedsam.harness.rundir import read_metrics
from tiltedsam.harness.train import RunDiverged, RunInterrupted, train
from tiltedsam.optim.registry import REGISTRY, create_optimizer


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_checkpoint_with_a_code_payload_is_refused_and_never_runs(tmp_path, capsys, writer):
    run = stopped_run(tmp_path)
    marker = tmp_path / "PWNED"
    payload = {"format": "tiltedsam.checkpoint/2", "model": RunsAShellCommand(marker)}
    if writer == "torch.save":
        torch.save(payload, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(pickle.dumps(payload))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would print more than the one line
        line = cli_error(["train", "--resume", "--out", str(run)], capsys)
    assert "refusing to load" in line and str(run / "checkpoint.pt") in line
    with pytest.raises(SystemExit, match="refusing to load .*checkpoint.pt"):
        main(["analyze", str(run), "--out", str(tmp_path / "analysis")])
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(run)
    assert not marker.exists()  # the command never ran
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1: nothing trained


def test_save_refuses_anything_but_plain_data(tmp_path):
    with pytest.raises(CheckpointError, match=r"payload\['extra'\] is a .*RunsAShellCommand"):
        save_checkpoint(tmp_path / "c.pt", {"extra": RunsAShellCommand(tmp_path / "x")})
    assert not (tmp_path / "c.pt").exists()


def test_flipped_bytes_are_detected_and_nothing_trains(tmp_path, capsys):
    run = stopped_run(tmp_path)
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    metrics_before = (run / "metrics.csv").read_text()
    line = cli_error(["train", "--resume", "--out", str(run)], capsys)
    assert "checkpoint.pt" in line and ("corrupt" in line or "cannot read" in line)
    assert (run / "metrics.csv").read_text() == metrics_before and not (run / "result.json").exists()


def test_a_changed_weight_fails_the_checksum(tmp_path):
    run = stopped_run(tmp_path)
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(iter(payload["model"]))
    payload["model"][name].view(-1)[0] += 1e-3  # one weight, checksum left as it was
    torch.save(payload, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="do not match its checksum"):
        load_checkpoint(run)


def test_kill_9_during_a_write_then_resume_removes_the_temporary_file(tmp_path, capsys):
    run = stopped_run(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
from tiltedsam._atomic import atomic_write_with
def slow(temporary):
    open(temporary, "wb").write(b"half a checkpoint")
    print("writing", flush=True)
    time.sleep(60)
atomic_write_with({str(run / 'checkpoint.pt')!r}, slow)
"""], stdout=subprocess.PIPE, text=True, env=ENV)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()  # kill -9 in the middle of the write
    writer.wait()
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".checkpoint.pt.")]
    assert len(leftovers) == 1
    (run / ".metrics.csv.abcd1234.tmp.csv").write_text("half")  # the same for metrics.csv
    (run / "notes.tmp").write_text("a user's file")  # not ours: kept
    assert load_checkpoint(run)["epoch"] == 1  # the checkpoint itself is intact
    assert main(["train", "--resume", "--out", str(run)]) == 0
    capsys.readouterr()
    names = {p.name for p in run.iterdir()}
    assert not any(".tmp" in n for n in names - {"notes.tmp"}) and "notes.tmp" in names
    assert (run / "result.json").exists()


def test_next_save_removes_a_stale_temporary_of_the_checkpoint(tmp_path):
    stale = tmp_path / ".checkpoint.pt.zz99yy88.tmp.pt"
    stale.write_bytes(b"partial")
    save_checkpoint(tmp_path / "checkpoint.pt", {"x": 1})
    assert not stale.exists() and load_checkpoint(tmp_path)["x"] == 1


def test_resume_stays_bit_exact_with_the_new_checkpoint_format(tmp_path, tiny_run_config):
    train(tiny_run_config("optimizer.name=sam", out="a"))
    with pytest.raises(RunInterrupted):
        train(tiny_run_config("optimizer.name=sam", out="b"), stop_after_epochs=1)
    train(tiny_run_config("optimizer.name=sam", out="b"), resume=True)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(t, b["model"][k]) for k, t in a["model"].items())
    assert len(a["checksum"]) == 64 and a["checksum"] != b["checksum"]  # times differ, so do checksums
    # the epochs live in metrics.csv alone; the resumed run's rows equal the uninterrupted run's
    assert "metrics" not in a and "metrics" not in b
    untimed = [[{k: repr(v) for k, v in row.items() if not k.endswith("_seconds")}  # repr: NaN equals NaN
                for row in read_metrics(tmp_path / x)] for x in "ab"]
    assert len(untimed[0]) == 2 and untimed[0] == untimed[1]
    with pytest.raises(RunDiverged):
        train(load_config(None, ["data.name=digits", "data.limit=200", "model.name=mlp", "optimizer.lr=1e6",
                                 "budget.amount=1", "run.progress=false",
                                 f"run.out_dir={json.dumps(str(tmp_path / 'c'))}"]))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_optimizer_state_is_checkpoint_data(tmp_path, name):
    """Every registered optimizer's state survives a checkpoint (weights_only) and resumes bit-exactly."""
    import copy

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = create_optimizer(name, model.parameters(), model=model, seed=0, lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def closure_of(net):
        def closure():
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss
        return closure

    optimizer.step(closure_of(model))
    save_checkpoint(tmp_path / "c.pt", {"optimizer": optimizer.state_dict(), "model": model.state_dict()})
    loaded = load_checkpoint(tmp_path / "c.pt")
    twin = copy.deepcopy(model)
    twin.load_state_dict(loaded["model"])
    restored = create_optimizer(name, twin.parameters(), model=twin, seed=1, lr=0.1, momentum=0.9)
    restored.load_state_dict(loaded["optimizer"])
    for _ in range(2):
        optimizer.step(closure_of(model))
        restored.step(closure_of(twin))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


class _CodePayload:
    """Unpickles to a call of a (harmless) function: what a crafted checkpoint would smuggle in."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_sharded_checkpoint_blobs_are_data_never_code():
    import io as _io

    from tiltedsam.optim import dcp

    plain = {"a": torch.ones(2), "b": [1, "x", None], "c": {"step": 3}}
    assert dcp._unpack(dcp._pack(plain))["b"] == [1, "x", None]
    crafted = _io.BytesIO()
    torch.save({"own": _CodePayload()}, crafted)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        dcp._unpack(crafted.getvalue())
