"""One battery of behaviour tests run on every registered optimizer (new registry entries are covered
automatically): argument validation, descent, param groups, state_dict resumption, closure calls per
step, exact restoration of the parameters before the base step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tiltedsam import create_optimizer, grad_evals_per_step, list_optimizers
from conftest import sliced_closure_for

NAMES = [entry["name"] for entry in list_optimizers()]
DEFAULTS = {entry["name"]: entry["defaults"] for entry in list_optimizers()}


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 6, generator=gen)
    teacher = torch.randn(6, 3, generator=gen)
    return x, (x @ teacher).argmax(dim=1)


_closure = sliced_closure_for  # takes the Evaluation it serves: sub-batch ascent slices the batch through it


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


def _numeric_defaults(name: str) -> list[str]:
    return [k for k, v in DEFAULTS[name].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def test_registry_lists_the_paper_optimizers() -> None:
    # Table 1: ERM, SAM, ESAM1, ESAM2, PGN, RSAM, TSAM; plus the samplers of Sec. 4 / App. C
    for name in ("sgd", "sam", "esam1", "esam2", "pgn", "rsam", "tsam", "tsam-hmc", "tsam-naive"):
        assert name in NAMES
    for entry in list_optimizers():
        evals = entry["grad_evals_per_step"]
        assert entry["description"] and isinstance(evals, (int, float)) and not isinstance(evals, bool) and evals >= 1


@pytest.mark.parametrize("name", NAMES)
def test_invalid_arguments_raise_value_error_naming_them(name: str) -> None:
    model = _mlp()
    with pytest.raises(ValueError, match="seed"):
        create_optimizer(name, model.parameters(), lr=0.1, seed=-1)
    for key in _numeric_defaults(name):
        for bad in (-1, float("nan")):
            with pytest.raises(ValueError, match=key):
                create_optimizer(name, model.parameters(), lr=0.1, **{key: bad})


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_a_quadratic(name: str) -> None:
    curvature = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weights = nn.Parameter(torch.tensor([3.0, -2.0, 2.5, 1.5]))
    optimizer = create_optimizer(name, [weights], lr=0.2, seed=0)

    def loss_now() -> torch.Tensor:
        return 0.5 * (curvature * weights**2).sum()

    def closure() -> torch.Tensor:
        loss = loss_now()
        loss.backward()
        return loss

    start = float(loss_now().detach())
    for _ in range(12):
        optimizer.step(closure)
    assert float(loss_now().detach()) < 0.2 * start


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_a_small_network(name: str) -> None:
    model = _mlp()
    x, y = _data()
    optimizer = create_optimizer(name, model.parameters(), lr=0.5, seed=0)
    start = _loss(model, x, y)
    for _ in range(10):
        optimizer.step(_closure(model, x, y))
    assert _loss(model, x, y) < 0.8 * start


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_with_different_learning_rates(name: str) -> None:
    model = _mlp()
    x, y = _data()
    frozen, trained = model[0], model[2]
    groups = [{"params": frozen.parameters(), "lr": 0.0}, {"params": trained.parameters(), "lr": 0.1}]
    optimizer = create_optimizer(name, groups, lr=0.5, seed=0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.1]
    before = copy.deepcopy(model.state_dict())
    optimizer.step(_closure(model, x, y))
    after = model.state_dict()
    for key in ("0.weight", "0.bias"):  # lr = 0: restored bit-exactly and not moved
        assert torch.equal(before[key], after[key])
    assert not torch.equal(before["2.weight"], after["2.weight"])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    x, y = _data()
    model = _mlp()
    optimizer = create_optimizer(name, model.parameters(), lr=0.1, momentum=0.9, seed=3)
    for _ in range(2):
        optimizer.step(_closure(model, x, y))
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_model = copy.deepcopy(model.state_dict())
    for _ in range(3):
        optimizer.step(_closure(model, x, y))

    resumed = _mlp(seed=5)
    resumed.load_state_dict(saved_model)
    other = create_optimizer(name, resumed.parameters(), lr=0.1, momentum=0.9, seed=99)
    other.load_state_dict(saved_optimizer)
    for _ in range(3):
        other.step(_closure(resumed, x, y))
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert other.step_count == optimizer.step_count == 5


@pytest.mark.parametrize("name", NAMES)
def test_closure_called_the_declared_number_of_times(name: str) -> None:
    model = _mlp()
    x, y = _data()  # 48 rows: every registered ascent_fraction selects a whole number of them
    optimizer = create_optimizer(name, model.parameters(), lr=0.1, seed=0)
    declared = grad_evals_per_step(name)
    assert optimizer.grad_evals_per_step == declared
    spent = []
    for _ in range(10):  # a whole number of refresh periods of every registered lazy variant (k = 5)
        calls = [0.0]
        expected = optimizer.evaluations_next_step
        optimizer.step(_closure(model, x, y, calls))
        assert calls[0] == pytest.approx(expected)
        spent.append(calls[0])
    assert sum(spent) / len(spent) == pytest.approx(declared)  # the declared cost is the average


@pytest.mark.parametrize("name", NAMES)
def test_parameters_restored_exactly_before_the_base_step(name: str) -> None:
    model = _mlp()
    x, y = _data()
    optimizer = create_optimizer(name, model.parameters(), lr=0.1, seed=0)
    seen: list[list[torch.Tensor]] = []
    original_step = optimizer.base_optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([p.detach().clone() for p in model.parameters()])
        return original_step(*args, **kwargs)

    optimizer.base_optimizer.step = recording_step
    for _ in range(2):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step(_closure(model, x, y))
        assert all(torch.equal(a, b) for a, b in zip(before, seen[-1]))
        assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # and it did step
    assert math.isfinite(optimizer.last_step.objective)


@pytest.mark.parametrize("name", NAMES)
def test_manual_step_matches_closure_step(name: str) -> None:
    x, y = _data()
    models = [_mlp(), _mlp()]
    optimizers = [create_optimizer(name, m.parameters(), lr=0.1, seed=7) for m in models]
    for _ in range(2):
        optimizers[0].step(_closure(models[0], x, y))
        for evaluation in optimizers[1].manual_step():
            x_used, y_used = evaluation.batch(x, y)
            loss = nn.functional.cross_entropy(models[1](x_used), y_used)
            loss.backward()
            evaluation.record(loss)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known optimizers") as info:
        create_optimizer("adamsam", [nn.Parameter(torch.zeros(1))], lr=0.1)
    for name in NAMES:
        assert repr(name) in str(info.value)
