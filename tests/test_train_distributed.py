"""``tiltedsam train --nproc 2``: a two-process gloo run end to end on CPU, against one process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tiltedsam.cli import main
from tiltedsam.harness.config import load_config
from tiltedsam.harness.distributed import ShardedRandomSampler
from tiltedsam.harness.train import train

SETTINGS = [
    "data.name=digits", "data.limit=300", "model.name=mlp", "optimizer.name=tsam", "optimizer.lr=0.05",
    "optimizer.settings.num_samples=2", "budget.amount=2", "batch_size=32", "run.progress=false",
    "run.num_threads=1",
]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_nproc_2_matches_one_process(tmp_path, capsys):
    two = tmp_path / "two"
    args = ["train", "--nproc", "2", "--out", str(two)]
    for setting in SETTINGS:
        args += ["--set", setting]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("run directory:") == 1  # rank 0 reports, once

    one = tmp_path / "one"
    result_one = train(load_config(None, SETTINGS + [f"run.out_dir={json.dumps(str(one))}"]))
    # the same files, the same result keys, the same metric columns
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    result_two = json.loads((two / "result.json").read_text())
    assert result_two.keys() == result_one.keys()
    assert json.loads((two / "run.json").read_text())["world_size"] == 2
    rows_one, rows_two = read_metrics(one), read_metrics(two)
    assert rows_two[0].keys() == rows_one[0].keys() and len(rows_two) == len(rows_one) == 2
    # the two ranks together see the single process's batches: the same training, to float tolerance
    for row_one, row_two in zip(rows_one, rows_two):
        for column in ("train_loss", "train_acc", "train_objective", "val_loss", "val_acc", "test_loss",
                       "effective_sample_size"):
            assert float(row_two[column]) == pytest.approx(float(row_one[column]), rel=1e-4, abs=1e-6), column
        assert row_two["step"] == row_one["step"] and row_two["grad_evals"] == row_one["grad_evals"]
    # rank 0's checkpoint holds the plain model's weights (no DDP "module." prefix) equal to one process's
    weights_one = torch.load(one / "checkpoint.pt", weights_only=False)["model"]
    weights_two = torch.load(two / "checkpoint.pt", weights_only=False)["model"]
    assert weights_two.keys() == weights_one.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], rtol=1e-4, atol=1e-5)


def test_nproc_rejects_a_global_batch_it_cannot_split(tmp_path):
    with pytest.raises(SystemExit, match="divisible"):
        main(["train", "--nproc", "3", "--out", str(tmp_path / "x"), "--set", "batch_size=32"])
    with pytest.raises(SystemExit, match="--nproc must be >= 1"):
        main(["train", "--nproc", "0", "--out", str(tmp_path / "y")])


def test_sharded_sampler_deals_out_the_single_process_order():
    dataset = list(range(11))
    single_generator = torch.Generator().manual_seed(3)
    single = [list(torch.utils.data.RandomSampler(dataset, generator=single_generator)) for _ in range(2)]
    world_size = 3
    generators = [torch.Generator().manual_seed(3) for _ in range(world_size)]
    for epoch in range(2):
        shards = [list(ShardedRandomSampler(dataset, generators[r], r, world_size)) for r in range(world_size)]
        assert all(len(shard) == 4 for shard in shards)  # 11 padded to 12
        dealt = [shards[i % world_size][i // world_size] for i in range(12)]
        assert dealt[:11] == single[epoch] and dealt[11] == single[epoch][0]
    # the shared generators stay in step with the single-process one
    assert torch.equal(generators[0].get_state(), single_generator.get_state())
    with pytest.raises(ValueError, match="rank must be"):
        ShardedRandomSampler(dataset, single_generator, 3, 3)
