"""A ``torch.compile``d model trains under the perturbation optimizers without recompiling at each
evaluation and without graph breaks caused by the optimizer (the optimizer runs eagerly around the
compiled model; what could break compilation is what it does to the model between evaluations: moving
the parameters in place, freezing the BatchNorm statistics, handing out sub-batches)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tiltedsam import create_optimizer

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 6, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _train(name: str, model: nn.Module, net: nn.Module, steps: int, **settings) -> list[float]:
    x, y = _batch()
    optimizer = create_optimizer(name, model.parameters(), lr=0.05, momentum=0.9, model=net, seed=0, **settings)

    def closure(evaluation):
        inputs, targets = evaluation.batch(x, y)
        loss = nn.functional.cross_entropy(net(inputs), targets)
        loss.backward()
        return loss

    return [float(optimizer.step(closure)) for _ in range(steps)]


# The optimizers freeze BatchNorm's running statistics in every evaluation but a step's first one by
# clearing ``track_running_stats``, a module attribute dynamo guards on: one graph per BatchNorm mode,
# both compiled during the first step and reused from then on.
@pytest.mark.parametrize("name, settings, graphs", [
    ("tsam", {"num_samples": 3}, 2),
    # ~10 s each on a loaded 2-core machine: the rest run with the slow tests
    pytest.param("sam", {}, 2, marks=pytest.mark.slow),
    pytest.param("tsam-shared", {}, 2, marks=pytest.mark.slow),
    pytest.param("tsam-lazy", {"refresh_every": 2}, 2, marks=pytest.mark.slow),
    # the sub-batch is a second input shape: dynamo recompiles once with a dynamic batch dimension
    pytest.param("tsam-subbatch", {"ascent_fraction": 0.5}, None, marks=pytest.mark.slow),
])
def test_compiled_model_never_recompiles_after_the_first_step(name: str, settings: dict, graphs: int) -> None:
    dynamo.reset()
    counters.clear()
    model = _net()
    eager_model = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")  # graph capture and guards as with inductor, no C build
    _train(name, model, compiled, 2, **settings)  # warm-up: the first evaluations compile
    with dynamo.config.patch(error_on_recompile=True):  # any recompile from here on raises
        compiled_losses = _train(name, model, compiled, 4, **settings)
    assert not counters["graph_break"], dict(counters["graph_break"])
    if graphs is not None:
        assert counters["stats"]["unique_graphs"] == graphs
    assert counters["stats"]["unique_graphs"] <= 4  # bounded, far below dynamo's recompile limit (8)
    # the compiled model follows the same trajectory as the eager one (2 + 4 steps from the same start)
    _train(name, eager_model, eager_model, 2, **settings)
    eager_losses = _train(name, eager_model, eager_model, 4, **settings)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    for a, b in zip(model.state_dict().values(), eager_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_inductor_compiled_model_trains_under_tsam() -> None:
    dynamo.reset()
    counters.clear()
    model = _net()
    compiled = torch.compile(model)  # CPU inductor: builds C++ kernels with the system compiler
    _train("tsam", model, compiled, 1)
    with dynamo.config.patch(error_on_recompile=True):
        losses = _train("tsam", model, compiled, 5)
    assert not counters["graph_break"]
    assert losses[-1] < losses[0]
