"""``tiltedsam train --nproc 2 --set run.parallel=fsdp``: an FSDP2 run, stopped, resumed in one process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.config import ConfigError, load_config
from tiltedsam.harness.train import train

SETTINGS = [
    "data.name=digits", "data.limit=300", "model.name=mlp", "optimizer.name=tsam", "optimizer.lr=0.05",
    "optimizer.settings.num_samples=2", "budget.amount=2", "batch_size=32", "run.progress=false",
    "run.num_threads=1",
]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_fsdp_run_stops_and_resumes_in_one_process_like_an_uninterrupted_run(tmp_path, capsys):
    sharded = tmp_path / "fsdp"
    args = ["train", "--nproc", "2", "--set", "run.parallel=fsdp", "--out", str(sharded), "--stop-after-epochs", "1"]
    for setting in SETTINGS:
        args += ["--set", setting]
    assert main(args) == 3  # interrupted after epoch 1, leaving a sharded checkpoint
    assert len(list(sharded.glob("checkpoint-*.dcp"))) == 1
    assert main(["train", "--resume", "--out", str(sharded)]) == 0  # one process, a plain model
    assert "run directory:" in capsys.readouterr().out

    one = tmp_path / "one"
    train(load_config(None, SETTINGS + [f"run.out_dir={json.dumps(str(one))}"]))
    rows_one, rows_sharded = read_metrics(one), read_metrics(sharded)
    assert len(rows_one) == len(rows_sharded) == 2
    for row_one, row_sharded in zip(rows_one, rows_sharded):
        for column in ("train_loss", "train_acc", "train_objective", "val_loss", "val_acc", "test_loss",
                       "test_acc", "effective_sample_size"):
            assert float(row_sharded[column]) == pytest.approx(float(row_one[column]), rel=1e-4, abs=1e-6), column
        assert row_sharded["step"] == row_one["step"]


def test_run_parallel_names_the_allowed_modes():
    with pytest.raises(ConfigError, match=r"run\.parallel.*ddp \| fsdp"):
        load_config(None, ["run.parallel=zero3"])
