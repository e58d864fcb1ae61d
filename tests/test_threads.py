"""The thread policy shared by every computing command (tiltedsam._threads) and where it is recorded."""

from __future__ import annotations

import json

import pytest
import torch

from tiltedsam._threads import ENV_VAR, choose_threads, configure_threads


@pytest.mark.parametrize("cores, load, processes, cap, expected", [
    (2, 0.0, 1, None, 2),    # idle 2-core machine, one process: both cores
    (2, 1.0, 1, None, 1),    # one competing CPU-bound process: one thread, not two fighting for one core
    (2, 7.6, 1, None, 1),    # heavily shared machine: never below 1
    (2, 0.0, 2, None, 1),    # two sweep workers share two cores
    (16, 0.0, 2, None, 8),
    (16, 10.2, 1, None, 6),  # floor(16 - 10.2 + 0.25) idle cores
    (16, 0.0, 1, 1, 1),      # the toy problems cap the automatic choice at 1
])
def test_policy_divides_the_idle_cores_between_processes(cores, load, processes, cap, expected):
    choice = choose_threads(None, processes, default_cap=cap, environ={}, cores=cores, load=load)
    assert (choice.threads, choice.source) == (expected, "policy")
    assert f"{cores} cores" in choice.detail


def test_explicit_request_beats_environment_beats_omp():
    env = {ENV_VAR: "3", "OMP_NUM_THREADS": "5"}
    assert choose_threads(4, environ=env, cores=2, load=0).threads == 4
    assert choose_threads(None, environ=env, cores=2, load=0).threads == 3
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "5"}, cores=2, load=0).threads == 5
    assert choose_threads(0, environ={}, cores=2, load=0).source == "policy"  # 0 / None: automatic
    # a malformed OMP_NUM_THREADS is ignored (as torch ignores it), a malformed override is an error
    assert choose_threads(None, environ={"OMP_NUM_THREADS": "lots"}, cores=2, load=0).source == "policy"
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be an integer >= 1, got 'two'"):
        choose_threads(None, environ={ENV_VAR: "two"})
    with pytest.raises(ValueError, match="--threads must be an integer >= 1, got -2"):
        choose_threads(-2)
    with pytest.raises(ValueError, match="processes must be an integer >= 1"):
        choose_threads(None, processes=0)


def test_configure_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert configure_threads(3).threads == 3 and torch.get_num_threads() == 3
        assert configure_threads(1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cli_rejects_a_bad_thread_count(capsys):
    from tiltedsam.cli import main

    for command in (["example"], ["compare"], ["toy", "fig1"], ["sweep", "x.toml"], ["train"]):
        with pytest.raises(SystemExit):
            main([*command, "--threads", "0"])
        assert "--threads must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_a_run_records_its_threads(tmp_path):
    from tiltedsam.harness.config import load_config
    from tiltedsam.harness.train import train

    before = torch.get_num_threads()
    try:
        config = load_config(None, ["data.name='digits'", "data.limit=200", "model.name='mlp'", "optimizer.name='sgd'",
                                    "budget.amount=1", "run.num_threads=2", "run.progress=false",
                                    f"run.out_dir={json.dumps(str(tmp_path / 'run'))}"])
        result = train(config)
        assert result["threads"] == 2
        run_info = json.loads((tmp_path / "run" / "run.json").read_text())
        assert run_info["threads"]["threads"] == 2 and run_info["threads"]["source"] == "request"
    finally:
        torch.set_num_threads(before)


def test_busy_cores_counts_a_competitor_that_just_started(monkeypatch):
    """The 1-minute load average lags; the runnable-task count of /proc/loadavg does not."""
    import io

    import tiltedsam._threads as threads_module

    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (0.2, 0.1, 0.05))
    monkeypatch.setattr(threads_module, "open", lambda *a, **k: io.StringIO("0.20 0.10 0.05 2/180 4242\n"),
                        raising=False)
    assert threads_module.busy_cores() == 1.0  # two runnable tasks: this one and the competitor
    assert choose_threads(None, environ={}, cores=2).threads == 1
    monkeypatch.setattr(threads_module, "open", lambda *a, **k: io.StringIO("0.20 0.10 0.05 1/180 4242\n"),
                        raising=False)
    assert threads_module.busy_cores() == 0.2 and choose_threads(None, environ={}, cores=2).threads == 2
