"""Hostile or broken inputs get one ``error:`` line and create nothing: bad files and values, a CIFAR
archive with a code payload, a YAML alias bomb, unsafe labels, seeds out of range, invalid sweeps;
a base optimizer without momentum (Adam) gets none."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest
import torch

from cli_support import TINY, RunsAShellCommand, cli_error
from tiltedsam.cli import main
from tiltedsam.harness.checkpoints import load_checkpoint
from tiltedsam.harness.config import ConfigError, load_config
from tiltedsam.harness.train import train


def test_hostile_inputs_get_one_line(tmp_path, capsys):
    random_bytes = bytes(range(256)) * 4
    cases = []
    for suffix in (".toml", ".yaml", ".json"):
        (tmp_path / f"rand{suffix}").write_bytes(random_bytes)
        cases.append((["train", "--config", str(tmp_path / f"rand{suffix}")], "not UTF-8"))
        cases.append((["sweep", str(tmp_path / f"rand{suffix}")], "not UTF-8"))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    cases.append((["train", "--config", str(tmp_path / "deep.json")], "nested too deeply"))
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    cases += [
        (["train", *TINY, "--out", "/proc/x"], "run.out_dir = '/proc/x' cannot be used"),
        (["train", *TINY, "--out", str(tmp_path / "file" / "sub")], "cannot be used as a run directory"),
        (["train", *TINY, "--set", "run.device=quantum", "--out", str(tmp_path / "q")], "run.device = 'quantum'"),
        (["train", *TINY, "--set", "optimizer.settings.bogus=1", "--out", str(tmp_path / "b")],
         "unknown optimizer setting(s) optimizer.settings.bogus"),
        (["train", *TINY, "--set", "optimizer.name=tsam", "--set", "optimizer.settings.tilt='high'",
          "--out", str(tmp_path / "t")], "optimizer 'tsam' rejects its settings"),
        (["train", *TINY, "--set", "model.options.hidden_sizes=[100000000000]", "--out", str(tmp_path / "h")],
         "parameters"),
        (["report", str(tmp_path / "file")], "not an SQLite database"),
        (["report", str(tmp_path / "notes.db")], "not an SQLite database"),
    ]
    if not torch.cuda.is_available():
        cases.append((["train", *TINY, "--set", "run.device=cuda", "--out", str(tmp_path / "c")], "run.device = 'cuda'"))
    for argv, expected in cases:
        assert expected in cli_error(argv, capsys), argv
    assert not (tmp_path / "b").exists() and not (tmp_path / "q").exists()  # refused before anything is written
    assert (tmp_path / "file").read_text() == "x"  # SQLite was never let loose on it


def test_cifar_archive_with_a_code_payload_is_one_line(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    for part in ("train", "test"):
        (folder / part).write_bytes(pickle.dumps(RunsAShellCommand(marker)))
    line = cli_error(["train", "--set", "data.name=cifar100", "--set", f"data.data_dir={json.dumps(str(tmp_path))}",
                      "--set", "model.name=mlp", "--set", "run.progress=false", "--out", str(tmp_path / "run")], capsys)
    assert "forbidden global" in line and not marker.exists()


def test_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for previous, name in zip("abcdefgh", "bcdefghi"):
        bomb += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    assert len(bomb) < 400  # 9**9 = 387 million strings once expanded
    (tmp_path / "bomb.yaml").write_text(bomb)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(tmp_path / "bomb.yaml")
    assert "alias" in cli_error(["sweep", str(tmp_path / "bomb.yaml")], capsys)
    assert time.perf_counter() - start < 5
    (tmp_path / "loop.yaml").write_text("seed: &a [*a]\n")
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "big.json").write_text(" " * (2 << 20) + "{}")
    with pytest.raises(ConfigError, match="configs are at most"):
        load_config(tmp_path / "big.json")


def test_unsafe_labels_seed_range_and_invalid_sweeps_create_nothing(tmp_path, capsys):
    out = tmp_path / "out"

    def sweep_toml(extra: str, optimizers: str = '["sgd"]') -> Path:
        path = tmp_path / "s.toml"
        path.write_text(f'name = "x"\nout_dir = {json.dumps(str(out))}\noptimizers = {optimizers}\n'
                        f'seeds = [0]\nprogress = false\n{extra}\n[base]\ndata = {{name = "digits", limit = 200}}\n'
                        'model = {name = "mlp"}\n')
        return path

    for extra, optimizers, expected in [
            ('[variants."../../../escape"]\n"optimizer.name" = "sgd"', '["../../../escape"]', "not a safe name"),
            ("", '["sgd", "nope"]', "neither a registered optimizer"),
            ('[grid]\n"optimizer.settings.bogus" = [1]', '["sgd"]', "optimizer.settings.bogus"),
            ("", '["sgd"]\nworkers = 0', "workers = 0")]:
        assert expected in cli_error(["sweep", str(sweep_toml(extra, optimizers))], capsys)
        assert not out.exists()  # nothing created: no directory, no sweep.json, no database
        assert not (tmp_path.parent / "escape").exists()
    assert "seed = 18446744073709551616" in cli_error(["train", *TINY, "--set", f"seed={2**64}", "--out",
                                                       str(tmp_path / "r")], capsys)
    with pytest.raises(ConfigError, match="seed = 4294967296"):
        load_config(None, [f"seed={2**32}"])
    with pytest.raises(SystemExit, match="--stop-after-epochs must be >= 1"):
        main(["train", *TINY, "--out", str(tmp_path / "r"), "--stop-after-epochs", "-1"])
    with pytest.raises(ConfigError, match="stop_after_epochs"):
        train(load_config(None, ["data.name=digits", "model.name=mlp", f"run.out_dir={json.dumps(str(tmp_path))}"]),
              stop_after_epochs=0)


def test_adam_base_gets_no_momentum_and_trains(tmp_path, tiny_run_config):
    """base = "adam" used to fail with Adam.__init__() got an unexpected keyword argument 'momentum'."""
    result = train(tiny_run_config("optimizer.base=adam", "optimizer.lr=0.001",
                                   "optimizer.settings={betas = [0.8, 0.99]}", "budget.kind=steps", out="adam"))
    assert result["steps"] == 2
    state = load_checkpoint(tmp_path / "adam")["optimizer"]["base_optimizer"]["param_groups"][0]
    assert state["betas"] == (0.8, 0.99) or state["betas"] == [0.8, 0.99]
    assert "momentum" not in state
