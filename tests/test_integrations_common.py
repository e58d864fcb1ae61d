"""The framework-free core of the Lightning and Trainer adapters (tiltedsam.integrations.common)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tiltedsam import create_optimizer
from tiltedsam.integrations.common import CombinedGradientStep, diagnostics_of, run_evaluations


def problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    gen = torch.Generator().manual_seed(1)
    return net, torch.randn(12, 4, generator=gen), torch.randint(0, 2, (12,), generator=gen)


def test_framework_step_applies_the_base_step_once_after_the_evaluations_and_refuses_otherwise():
    net, x, y = problem()
    optimizer = create_optimizer("tsam", net.parameters(), model=net, seed=1, num_samples=2, lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # wraps optimizer.step
    wrapped = optimizer.step
    step = CombinedGradientStep(optimizer).install()
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(RuntimeError, match="before the training step ran"):
        optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))

    chunks = list(zip(x.chunk(3), y.chunk(3)))
    assert run_evaluations(optimizer, chunks, lambda mb, ev: F.cross_entropy(net(mb[0]), mb[1]) / 3,
                           lambda loss: loss.backward())
    step.mark_ready()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        optimizer.step()
        scheduler.step()
    assert step.applied == 1 and optimizer.step_count == 1
    with pytest.raises(RuntimeError):  # the combined gradient was used once
        optimizer.step()

    # a closure given by user code still gets the optimizer's own step(closure)
    def closure():
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss
    optimizer.step(closure)
    assert optimizer.step_count == 2 and step.applied == 1
    step.uninstall()
    assert optimizer.step == wrapped


def test_three_accumulated_micro_batches_equal_step_closure_on_their_union():
    net_a, x, y = problem()
    net_b, _, _ = problem()
    opt_a = create_optimizer("tsam", net_a.parameters(), model=net_a, seed=1, num_samples=2, lr=0.1)
    opt_b = create_optimizer("tsam", net_b.parameters(), model=net_b, seed=1, num_samples=2, lr=0.1)

    def closure():
        loss = F.cross_entropy(net_a(x), y)
        loss.backward()
        return loss
    opt_a.step(closure)
    chunks = list(zip(x.chunk(3), y.chunk(3)))
    run_evaluations(opt_b, chunks, lambda mb, ev: F.cross_entropy(net_b(mb[0]), mb[1]) / 3, lambda loss: loss.backward())
    opt_b.base_step()
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert diagnostics_of(opt_b)["objective"] == pytest.approx(opt_a.last_step.objective, rel=1e-5)


def test_diagnostics_keep_only_finite_numbers():
    net, x, y = problem()
    optimizer = create_optimizer("sam", net.parameters(), lr=0.1)
    assert diagnostics_of(optimizer) == {}  # before any step: objective and ESS are NaN
