"""TSAM's batched step (``parallel_samples=True``): its input forms, equality with the loop without noise, the loop
step after it, and its refusals (no model, a non-scalar or non-finite loss, random layers, stray, sharded or
distributed parameters)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tiltedsam import TSAM


def _pair():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    return model, copy.deepcopy(model)


def test_a_tuple_of_inputs_and_a_single_input_take_the_same_step() -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 4, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    single, as_tuple = _pair()
    settings = dict(lr=0.1, seed=2, num_samples=3, rho=0.1, tilt=5.0, parallel_samples=True)
    opt_single = TSAM(single.parameters(), model=single, **settings)
    opt_tuple = TSAM(as_tuple.parameters(), model=as_tuple, **settings)
    for _ in range(2):
        a = opt_single.step_batched(x, lambda output: F.cross_entropy(output, y))
        b = opt_tuple.step_batched((x,), lambda output: F.cross_entropy(output, y))
        assert float(a) == float(b)
    for p, q in zip(single.parameters(), as_tuple.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(next(single.parameters()), next(_pair()[0].parameters()))  # it did step


def test_step_batched_without_a_model_says_what_it_needs() -> None:
    model, _ = _pair()
    optimizer = TSAM(model.parameters(), lr=0.1, parallel_samples=True, model=model)
    optimizer.model = None  # the constructor refuses a missing model; the step re-checks before using it
    with pytest.raises(ValueError) as raised:
        optimizer.step_batched(torch.zeros(2, 4), lambda output: output.sum())
    assert str(raised.value) == "step_batched needs TSAM(..., model=model): it evaluates that model functionally"


def _batch(rows: int = 12):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(rows, 4, generator=generator), torch.randint(0, 3, (rows,), generator=generator)


def test_without_noise_the_batched_step_equals_the_loop() -> None:
    x, y = _batch()
    batched, looped = _pair()
    settings = dict(lr=0.1, seed=2, num_samples=3, rho=0.1, tilt=5.0, noise_radius=0.0)
    opt_batched = TSAM(batched.parameters(), model=batched, parallel_samples=True, **settings)
    opt_looped = TSAM(looped.parameters(), model=looped, **settings)

    def closure():
        loss = F.cross_entropy(looped(x), y)
        loss.backward()
        return loss

    opt_batched.step_batched(x, lambda output: F.cross_entropy(output, y))
    opt_looped.step(closure)
    assert opt_batched.last_step.losses == pytest.approx(opt_looped.last_step.losses, rel=1e-5)
    for p, q in zip(batched.parameters(), looped.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_the_loop_step_still_works_after_a_batched_step() -> None:
    x, y = _batch()
    model, _ = _pair()
    optimizer = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1, num_samples=2, seed=0)
    optimizer.step_batched(x, lambda output: F.cross_entropy(output, y))

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert len(optimizer.last_step.losses) == 2


def test_a_loss_that_is_not_a_scalar_is_refused() -> None:
    x, y = _batch()
    model, _ = _pair()
    optimizer = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1, num_samples=2, seed=0)
    with pytest.raises(ValueError, match="loss_fn must return a scalar tensor"):
        optimizer.step_batched(x, lambda output: F.cross_entropy(output, y, reduction="none"))


def test_a_non_finite_batched_loss_raises_the_non_finite_error() -> None:
    from tiltedsam.tilt import NonFiniteLossError

    x, y = _batch()
    model, _ = _pair()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1, num_samples=2, seed=0)
    with pytest.raises(NonFiniteLossError):
        optimizer.step_batched(x, lambda output: F.cross_entropy(output, y) * float("nan"))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_random_layers_are_refused_with_the_randomness_choices() -> None:
    x, y = _batch()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3))
    optimizer = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1, num_samples=2, seed=0)
    with pytest.raises(ValueError) as raised:
        optimizer.step_batched(x, lambda output: F.cross_entropy(output, y))
    assert "randomness='different'" in str(raised.value) and "'same'" in str(raised.value)


def test_parameters_outside_the_model_are_named_by_shape() -> None:
    x, y = _batch()
    model, _ = _pair()
    stray = nn.Parameter(torch.zeros(5, 7))
    optimizer = TSAM([*model.parameters(), stray], model=model, parallel_samples=True, lr=0.1, num_samples=2)
    with pytest.raises(ValueError) as raised:
        optimizer.step_batched(x, lambda output: F.cross_entropy(output, y))
    assert "[(5, 7)]" in str(raised.value) and "TSAM(model=...)" in str(raised.value)


def test_sharded_parameters_and_torch_distributed_are_refused(monkeypatch) -> None:
    from tiltedsam.optim import tsam as tsam_module

    model, _ = _pair()
    optimizer = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1)
    with monkeypatch.context() as patch:
        patch.setattr(tsam_module, "is_sharded", lambda params: True)
        with pytest.raises(ValueError) as raised:
            optimizer.step_batched(torch.zeros(2, 4), lambda output: output.sum())
    message = str(raised.value)
    assert "parallel_samples=True" in message and "FSDP2" in message and "use step() or manual_step()" in message
    monkeypatch.setattr(optimizer.distributed, "is_active", lambda: True)
    with pytest.raises(ValueError) as raised:
        optimizer.step_batched(torch.zeros(2, 4), lambda output: output.sum())
    message = str(raised.value)
    assert "torch.distributed" in message and "DDP" in message and "use step() or manual_step()" in message
