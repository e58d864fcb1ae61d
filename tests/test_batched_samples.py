"""EXPERIMENTAL batched evaluation of TSAM's s samples (``parallel_samples=True``, ``step_batched``):
the same update as the loop of ``step(closure)``, up to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tiltedsam import TSAM

TOLERANCE = dict(rtol=1e-4, atol=1e-6)  # float32 rounding of a grouped vs a plain convolution, 3 steps


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def cnn_with_batchnorm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 3))


def data(model_kind: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=generator) if model_kind == "mlp" else torch.randn(16, 2, 6, 6, generator=generator)
    y = torch.randint(0, 3, (16,), generator=generator)
    return x, y


def twins(build, **settings):
    torch.manual_seed(0)
    looped = build()
    batched = copy.deepcopy(looped)
    common = dict(lr=0.1, momentum=0.9, seed=3, num_samples=3, rho=0.1, noise_radius=0.5, **settings)
    return (looped, TSAM(looped.parameters(), model=looped, **common),
            batched, TSAM(batched.parameters(), model=batched, parallel_samples=True, **common))


@pytest.mark.parametrize("kind, build", [("mlp", mlp), ("cnn", cnn_with_batchnorm)])
@pytest.mark.parametrize("settings", [{"tilt": 20.0}, {"tilt": 0.0}, {"tilt": float("inf"), "noise": "uniform"},
                                      {"tilt": "auto", "tilt_smoothing": 0.5}])
def test_batched_step_equals_the_loop(kind, build, settings):
    looped, loop_opt, batched, batch_opt = twins(build, **settings)
    for step in range(3):
        x, y = data(kind, seed=step)

        def closure():
            loss = F.cross_entropy(looped(x), y)
            loss.backward()
            return loss

        loop_objective = loop_opt.step(closure)
        batch_objective = batch_opt.step_batched(x, lambda output: F.cross_entropy(output, y))
        assert float(batch_objective) == pytest.approx(float(loop_objective), rel=1e-5)
        assert batch_opt.last_step.losses == pytest.approx(loop_opt.last_step.losses, rel=1e-5)
        assert batch_opt.last_step.weights == pytest.approx(loop_opt.last_step.weights, rel=1e-4, abs=1e-6)
        assert batch_opt.last_step.extra["noise_loss"] == pytest.approx(loop_opt.last_step.extra["noise_loss"], rel=1e-5)
        # tilt="auto": the batched path folds its losses into the rule exactly as the loop does
        assert batch_opt.tilt == pytest.approx(loop_opt.tilt, rel=1e-4)
    for (name, a), b in zip(looped.state_dict().items(), batched.state_dict().values()):
        if a.is_floating_point():  # parameters and BatchNorm running statistics
            torch.testing.assert_close(b, a, **TOLERANCE, msg=f"{name} differs")
        else:  # num_batches_tracked: once per step, as in the loop
            assert torch.equal(a, b), name
    # the noise generator advanced identically (same draws, same order)
    assert torch.equal(loop_opt.generator.get_state(), batch_opt.generator.get_state())
    assert batch_opt.step_count == loop_opt.step_count == 3


def test_batchnorm_statistics_move_once_per_step_from_the_first_sample():
    _, _, model, opt = twins(cnn_with_batchnorm, tilt=5.0)
    x, y = data("cnn")
    bn = model[1]
    opt.step_batched(x, lambda output: F.cross_entropy(output, y))
    assert int(bn.num_batches_tracked) == 1
    assert not torch.allclose(bn.running_mean, torch.zeros(4))


def test_closure_step_still_loops_with_parallel_samples():
    looped, loop_opt, batched, batch_opt = twins(mlp, tilt=10.0)
    x, y = data("mlp")
    calls = []

    def closure_for(model):
        def closure():
            calls.append(model)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        return closure

    loop_opt.step(closure_for(looped))
    batch_opt.step(closure_for(batched))
    assert calls.count(batched) == 6  # 2 s evaluations, as without the option
    for a, b in zip(looped.parameters(), batched.parameters()):
        assert torch.equal(a, b)


def test_dropout_is_refused_unless_randomness_is_chosen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    opt = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1, seed=0)
    x, y = data("mlp")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="randomness='different'"):
        opt.step_batched(x, lambda output: F.cross_entropy(output, y))
    for a, b in zip(before, model.parameters()):  # a refused step changes nothing
        assert torch.equal(a, b)
    opt.step_batched(x, lambda output: F.cross_entropy(output, y), randomness="different")
    losses = opt.last_step.losses
    assert len(losses) == 3 and len(set(losses)) == 3  # independent masks per sample


def test_bad_configurations_raise_clearly():
    model = mlp()
    with pytest.raises(ValueError, match="needs sampler='ascent' and model="):
        TSAM(model.parameters(), parallel_samples=True, lr=0.1)
    with pytest.raises(ValueError, match="needs sampler='ascent' and model="):
        TSAM(model.parameters(), model=model, sampler="naive", parallel_samples=True, lr=0.1)
    with pytest.raises(ValueError, match="parallel_samples must be True or False"):
        TSAM(model.parameters(), model=model, parallel_samples=1, lr=0.1)
    plain = TSAM(model.parameters(), model=model, lr=0.1)
    x, y = data("mlp")
    with pytest.raises(ValueError, match="parallel_samples=True"):
        plain.step_batched(x, lambda output: F.cross_entropy(output, y))
    other = mlp()
    foreign = TSAM(list(model.parameters()) + list(other.parameters()), model=model, parallel_samples=True, lr=0.1)
    with pytest.raises(ValueError, match="not parameters of the model"):
        foreign.step_batched(x, lambda output: F.cross_entropy(output, y))
    opt = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1)
    with pytest.raises(ValueError, match="randomness must be one of"):
        opt.step_batched(x, lambda output: F.cross_entropy(output, y), randomness="sometimes")
