"""One run: run directory contents, exact resume after an interruption, checkpoints, analysis loading."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tiltedsam.cli import main
from tiltedsam.harness.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from tiltedsam.harness.rundata import load_for_analysis
from tiltedsam.harness.config import load_config
from tiltedsam.harness.train import METRIC_COLUMNS, RunInterrupted, train

TIME_COLUMNS = {"train_seconds", "wall_seconds"}


def tiny(out, *extra):
    return load_config(None, ["data.name=digits", "data.limit=300", "data.label_noise=0.2", "model.name=mlp",
                              "optimizer.name=tsam", "optimizer.settings={tilt = 5.0, num_samples = 2}",
                              "optimizer.lr=0.05", "budget.amount=3", "run.progress=false", "run.num_threads=1",
                              f"run.out_dir={json.dumps(str(out))}", *extra])


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def without_time(rows):
    return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in rows]


def test_run_directory_is_self_describing(tmp_path):
    result = train(tiny(tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.toml", "config.json", "run.json", "metrics.csv", "checkpoint.pt", "result.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 0 and info["package_version"] and info["git_commit"]
    rows = read_metrics(run)
    assert list(rows[0]) == METRIC_COLUMNS and len(rows) == 3
    assert [int(r["grad_evals"]) for r in rows] == [int(r["step"]) * 4 for r in rows]  # s = 2: 4 evals/step
    saved = json.loads((run / "result.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["grad_evals"] == int(rows[-1]["grad_evals"])
    best = max(rows, key=lambda r: float(r["val_acc"]))
    assert saved["best_val_test_acc"] == pytest.approx(float(best["test_acc"]))
    assert saved["final_test_acc"] == pytest.approx(float(rows[-1]["test_acc"]))
    with pytest.raises(FileExistsError):
        train(tiny(run))  # a finished run is not overwritten


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tmp_path):
    straight = train(tiny(tmp_path / "a"))
    with pytest.raises(RunInterrupted):
        train(tiny(tmp_path / "b"), stop_after_epochs=1)
    assert len(read_metrics(tmp_path / "b")) == 1 and not (tmp_path / "b" / "result.json").exists()
    with pytest.raises(FileExistsError, match="unfinished run"):
        train(tiny(tmp_path / "b"))  # not silently restarted over the checkpoint
    torch.manual_seed(1234)  # the resumed run must not depend on the state of the global RNG
    resumed = train(tiny(tmp_path / "b"), resume=True)
    assert without_time(read_metrics(tmp_path / "a")) == without_time(read_metrics(tmp_path / "b"))
    for key in ("final_test_acc", "best_val_test_acc", "grad_evals", "steps", "final_train_loss"):
        assert resumed[key] == straight[key], key
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_cli_stop_and_resume(tmp_path, capsys):
    out = str(tmp_path / "cli")
    args = ["train", "--set", "data.name=digits", "--set", "data.limit=200", "--set", "model.name=mlp",
            "--set", "optimizer.name=sam", "--set", "budget.amount=2", "--set", "run.progress=false", "--out", out]
    assert main(args + ["--stop-after-epochs", "1"]) == 3
    assert main(["train", "--resume", "--out", out]) == 0
    assert "final test acc" in capsys.readouterr().out
    assert len(read_metrics(tmp_path / "cli")) == 2
    with pytest.raises(SystemExit, match="unknown config key.*optimizer.lrr"):
        main(["train", "--set", "optimizer.lrr=1", "--out", str(tmp_path / "x")])


def test_resume_refuses_another_configuration(tmp_path):
    with pytest.raises(RunInterrupted):
        train(tiny(tmp_path / "r"), stop_after_epochs=1)
    with pytest.raises(CheckpointError, match="another configuration"):
        train(tiny(tmp_path / "r", "optimizer.lr=0.01"), resume=True)


def test_checkpoint_of_another_format_is_rejected(tmp_path):
    torch.save({"format": "something/9"}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a tiltedsam checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    save_checkpoint(tmp_path / "ok.pt", {"x": 1})
    assert load_checkpoint(tmp_path / "ok.pt")["x"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_for_analysis_rebuilds_model_and_noisy_training_split(tmp_path):
    from tiltedsam.harness.data import load_dataset

    config = tiny(tmp_path / "run", "optimizer.name=sgd", "optimizer.settings={}", "budget.amount=1")
    train(config)
    target = load_for_analysis(tmp_path / "run")
    assert not target.model.training
    x_test, y_test = target.test
    with torch.no_grad():
        accuracy = float((target.model(x_test).argmax(1) == y_test).float().mean())
    assert accuracy == pytest.approx(target.meta["result"]["final_test_acc"])
    data = load_dataset("digits", seed=0, label_noise=0.2, limit=300)  # as the run loaded it
    labels = torch.stack([torch.as_tensor(y) for _, y in data.train])
    assert torch.equal(target.train[1], labels)
    assert target.meta["config"]["optimizer"]["name"] == "sgd"
    with torch.no_grad():
        loss = float(target.loss_fn(target.model(x_test), y_test))
    assert loss == pytest.approx(target.meta["result"]["final_test_loss"], rel=1e-5)


def test_tilt_schedule_is_applied_and_resumed(tmp_path):
    pytest.importorskip("tiltedsam.optim.schedules")
    straight = train(tiny(tmp_path / "a", "optimizer.tilt_schedule=increase"))
    with pytest.raises(RunInterrupted):
        train(tiny(tmp_path / "b", "optimizer.tilt_schedule=increase"), stop_after_epochs=2)
    train(tiny(tmp_path / "b", "optimizer.tilt_schedule=increase"), resume=True)
    rows = read_metrics(tmp_path / "a")
    tilts = [float(r["tilt"]) for r in rows]
    assert tilts == sorted(tilts) and tilts[0] < 5.0  # rises towards t = 5
    assert without_time(rows) == without_time(read_metrics(tmp_path / "b"))
    assert straight["steps"] == int(rows[-1]["step"])


def test_cli_train_accepts_the_documented_erm_alias(tmp_path, B, capsys):
    """``erm`` is the registry's alias of SGD: budgets and settings resolve through the registry."""
    from tiltedsam.cli import main

    assert main(["train", *B, "--set", "optimizer.name=erm", "--out", str(tmp_path / "erm")]) == 0
    result = json.loads((tmp_path / "erm" / "result.json").read_text())
    assert result["epochs"] == 1 and result["grad_evals_per_step"] == 1
