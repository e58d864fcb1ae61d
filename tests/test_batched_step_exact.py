"""TSAM's batched step (``parallel_samples=True``): its input forms and its refusal without a model."""

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
