"""Small things a new user meets in the first hour: base optimizers by name, a closure
that forgets backward(), the tilt diagnostic warning, help texts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tiltedsam import ERM, SAM, TSAM
from tiltedsam.optim.diagnostics import TiltDiagnosticWarning, ess_message
from tiltedsam.optim.registry import create_optimizer


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, torch.randn(16, 5), torch.randint(0, 3, (16,))


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_base_optimizer_by_name_in_the_constructor_as_in_the_factory(name, cls):
    model, x, y = problem()
    direct = TSAM(model.parameters(), name, lr=0.01, num_samples=2)
    factory = create_optimizer("tsam", model.parameters(), base_optimizer=name, lr=0.01, num_samples=2)
    assert type(direct.base_optimizer) is cls and type(factory.base_optimizer) is cls
    assert type(SAM(model.parameters(), name, lr=0.01).base_optimizer) is cls


def test_unknown_base_optimizer_name_lists_the_known_ones():
    model, _, _ = problem()
    with pytest.raises(ValueError, match=r"unknown base optimizer 'adamx'; known names: \['adam', 'adamw', 'sgd'\]"):
        TSAM(model.parameters(), "adamx", lr=0.01)


@pytest.mark.parametrize("make", [lambda p: ERM(p, torch.optim.SGD, lr=0.1),
                                  lambda p: SAM(p, torch.optim.SGD, lr=0.1),
                                  lambda p: TSAM(p, torch.optim.SGD, lr=0.1, num_samples=2, seed=0)])
def test_a_closure_without_backward_is_an_error_not_a_silent_no_op(make):
    model, x, y = problem()
    optimizer = make(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]

    def forgetful_closure():
        return nn.functional.cross_entropy(model(x), y)  # no loss.backward()

    with pytest.raises(RuntimeError, match=r"left every parameter's .grad None.*must call loss.backward\(\)"):
        optimizer.step(forgetful_closure)
    for p, q in zip(model.parameters(), before):  # restored, and no step taken
        assert torch.equal(p, q)

    def good_closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer.step(good_closure)  # the same optimizer still works afterwards
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("ess, s, kind", [(3.0, 3, "uniform"), (2.971, 3, "uniform"), (2.5, 3, None),
                                          (1.05, 3, "one sample"), (1.0, 5, "one sample"), (1.0, 1, None),
                                          (float("nan"), 3, None), (None, 3, None), (2.0, None, None)])
def test_ess_message_flags_uniform_and_degenerate_weights(ess, s, kind):
    message = ess_message(ess, s)
    if kind is None:
        assert message is None
    else:
        assert kind in message and f"s={s}" in message


def test_training_warns_once_when_the_tilt_has_no_effect(tmp_path, recwarn):
    """t = 0 weights the s samples uniformly, so the ESS is exactly s every step: one warning per run."""
    import json
    import warnings

    from tiltedsam.harness.config import load_config
    from tiltedsam.harness.train import train

    config = load_config(None, [
        "data.name='digits'", "data.limit=200", "model.name='mlp'", "optimizer.name='tsam'",
        "optimizer.settings={tilt=0.0, num_samples=2}", "budget.amount=2", "run.num_threads=1",
        "run.progress=false", f"run.out_dir={json.dumps(str(tmp_path / 'run'))}"])
    warnings.simplefilter("always")
    result = train(config)
    caught = [w for w in recwarn.list if issubclass(w.category, TiltDiagnosticWarning)]
    assert len(caught) == 1 and "mean ESS 2.000 of s=2" in str(caught[0].message)
    assert result["mean_effective_sample_size"] == pytest.approx(2.0)
    assert result["ess_warning"].startswith("epoch 1: mean ESS 2.000 of s=2")


def test_compare_help_prints_a_single_percent_sign(capsys):
    from tiltedsam.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal's width
    assert "20% symmetric" in text and "%%" not in text


def test_toy_progress_writes_no_carriage_returns_to_a_redirected_log(capsys):
    from tiltedsam.toy.descent import Run, descend_many
    from tiltedsam.toy.problems import as_problem

    descend_many(as_problem("fig1"), [Run("erm")], 0.5, 0.005, 50, 0.2, progress=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
