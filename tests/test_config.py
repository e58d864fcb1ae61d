"""Typed run config: rejection of unknown keys / bad types, overrides, round trips, budgets."""

from __future__ import annotations

import json

import pytest

from tiltedsam.harness.config import (ConfigError, RunConfig, from_dict, load_config, parse_override, run_key,
                                      save_config, to_dict)
from tiltedsam.harness.train import resolve_budget


def test_defaults_are_the_papers_recipe():
    config = RunConfig()
    assert config.batch_size == 64
    assert config.label_smoothing == pytest.approx(0.1)
    assert config.optimizer.base == "sgd"
    assert config.optimizer.momentum == pytest.approx(0.9)
    assert config.optimizer.weight_decay == pytest.approx(5e-4)


@pytest.mark.parametrize("data, named", [
    ({"bogus": 1}, "bogus"),
    ({"optimizer": {"lrr": 0.1}}, "optimizer.lrr"),
    ({"data": {"name": "digits", "noise": 0.2}}, "data.noise"),
])
def test_unknown_keys_are_rejected_by_dotted_name(data, named):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) " + named.replace(".", r"\.")):
        from_dict(RunConfig, data)


@pytest.mark.parametrize("data, named, expected", [
    ({"optimizer": {"lr": "fast"}}, "optimizer.lr", "number"),
    ({"batch_size": 1.5}, "batch_size", "integer"),
    ({"seed": True}, "seed", "integer"),
    ({"data": {"clean_validation": "yes"}}, "data.clean_validation", "boolean"),
    ({"optimizer": {"settings": {"tilt": object()}}}, "optimizer.settings", "table"),
    ({"data": {"limit": "all"}}, "data.limit", "integer or none"),
])
def test_wrong_types_are_rejected_naming_key_and_type(data, named, expected):
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, data)
    assert named in str(info.value) and expected in str(info.value)


def test_bad_values_name_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"budget\.kind = 'hours'.*epochs \| steps \| grad_evals"):
        from_dict(RunConfig, {"budget": {"kind": "hours"}})
    with pytest.raises(ConfigError, match=r"data\.label_noise"):
        from_dict(RunConfig, {"data": {"label_noise": 1.5}})


def test_int_is_accepted_for_float_and_kept_as_float():
    config = from_dict(RunConfig, {"optimizer": {"lr": 1}})
    assert isinstance(config.optimizer.lr, float) and config.optimizer.lr == 1.0


def test_overrides_are_parsed_as_toml_values():
    assert parse_override("optimizer.lr=0.03") == ("optimizer.lr", 0.03)
    assert parse_override("optimizer.settings.sampler=ascent") == ("optimizer.settings.sampler", "ascent")
    assert parse_override("data.limit=none") == ("data.limit", None)
    assert parse_override("x=[1, 2]") == ("x", [1, 2])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("optimizer.lr")
    config = load_config(None, ["optimizer.name=tsam", "optimizer.settings.tilt=5", "budget.kind=steps"])
    assert config.optimizer.settings == {"tilt": 5} and config.budget.kind == "steps"
    with pytest.raises(ConfigError, match="optimizer.lr"):
        load_config(None, ["optimizer.lr=abc"])


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_resolved_config_round_trips(tmp_path, suffix):
    config = load_config(None, ["data.name=digits", "data.label_noise=0.2", "data.limit=100", "model.name=mlp",
                                "model.options={hidden = 16}", "optimizer.name=tsam",
                                "optimizer.settings={tilt = 5.0, num_samples = 3, sampler = 'ascent'}",
                                "budget.kind=grad_evals", "budget.amount=600", "budget.match_optimizer=tsam",
                                f"run.out_dir={json.dumps(str(tmp_path / 'r'))}", "label=my \"quoted\" label"])
    save_config(config, tmp_path)
    again = load_config(tmp_path / f"config{suffix}")
    assert to_dict(again) == to_dict(config)
    assert run_key(again) == run_key(config)


def test_yaml_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 3\noptimizer:\n  name: sam\n  settings: {rho: 0.1}\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.seed == 3 and config.optimizer.settings == {"rho": 0.1}
    (tmp_path / "bad.yaml").write_text("optimizer:\n  nme: sam\n")
    with pytest.raises(ConfigError, match=r"optimizer\.nme"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_run_key_ignores_execution_settings_only():
    a = load_config(None, ["run.out_dir=x", "run.progress=false"])
    b = load_config(None, ["run.out_dir=y"])
    c = load_config(None, ["optimizer.lr=0.03"])
    assert run_key(a) == run_key(b) != run_key(c)


def test_budget_kinds_and_esam1_matching():
    # 10 steps per epoch; TSAM with s = 3 and the ascent sampler costs 6 evaluations per step
    tsam = load_config(None, ["optimizer.name=tsam", "optimizer.settings={num_samples = 3}", "budget.amount=4"])
    b = resolve_budget(tsam, steps_per_epoch=10)
    assert (b.total_steps, b.grad_evals_per_step, b.epochs) == (40, 6, 4)
    esam1 = load_config(None, ["optimizer.name=sam", "budget.amount=4", "budget.match_optimizer=tsam",
                               "budget.match_settings={num_samples = 3}"])
    e = resolve_budget(esam1, steps_per_epoch=10)
    assert e.total_grad_evals == b.total_grad_evals and e.total_steps == 3 * 40 and e.epochs == 12
    by_evals = resolve_budget(load_config(None, ["optimizer.name=sam", "budget.kind=grad_evals",
                                                 "budget.amount=25"]), steps_per_epoch=10)
    assert (by_evals.total_steps, by_evals.total_grad_evals, by_evals.epochs) == (12, 24, 2)
    steps = resolve_budget(load_config(None, ["budget.kind=steps", "budget.amount=15"]), steps_per_epoch=10)
    assert (steps.total_steps, steps.epochs) == (15, 2)
    with pytest.raises(ValueError, match="less than one step"):
        resolve_budget(load_config(None, ["optimizer.name=tsam", "budget.kind=grad_evals", "budget.amount=5"]), 10)


def test_a_model_that_needs_a_tokenizer_gets_it_and_a_conflicting_choice_is_named():
    from tiltedsam.harness.rundata import dataset_kwargs

    minilm = load_config(None, ["model.name=minilm", "data.name=rotten_tomatoes"])
    assert dataset_kwargs(minilm)["tokenizer"] == "minilm"  # picked for the model, no --set needed
    explicit = load_config(None, ["model.name=minilm", "data.name=rotten_tomatoes", "data.options={tokenizer = 'minilm'}"])
    assert dataset_kwargs(explicit)["tokenizer"] == "minilm"
    words = load_config(None, ["model.name=text_cnn", "data.name=rotten_tomatoes"])
    assert "tokenizer" not in dataset_kwargs(words)  # other models keep the data set's default
    conflict = load_config(None, ["model.name=minilm", "data.name=rotten_tomatoes", "data.options={tokenizer = 'words'}"])
    with pytest.raises(ConfigError, match="'words'.*'minilm'"):
        dataset_kwargs(conflict)
