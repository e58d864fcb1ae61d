"""ESAM2, PGN, RSAM and the ESAM1 budget: their update rules and the identities that tie them to SGD/SAM."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tiltedsam import ERM, SAM, create_optimizer, grad_evals_per_step, list_optimizers
from tiltedsam.optim import ESAM2, PGN, RSAM
from tiltedsam.optim.registry import budget_multiplier, equal_compute_steps
from tiltedsam.optim.rsam import filterwise_noise


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))

    def closure() -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return model, closure


def _closure(loss_fn):
    def closure() -> torch.Tensor:
        loss = loss_fn()
        loss.backward()
        return loss

    return closure


def _run(cls, steps: int = 3, seed: int = 0, **settings) -> list[torch.Tensor]:
    model, closure = _problem(seed)
    optimizer = cls(model.parameters(), lr=0.1, momentum=0.9, seed=0, **settings)
    for _ in range(steps):
        optimizer.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor], exact: bool = True) -> bool:
    if exact:
        return all(torch.equal(x, y) for x, y in zip(a, b))
    return all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(a, b))


# ---------------------------------------------------------------- PGN
def test_pgn_alpha_zero_is_sgd_and_alpha_one_is_sam() -> None:
    assert _same(_run(PGN, alpha=0.0, rho=0.1), _run(ERM))
    assert _same(_run(PGN, alpha=1.0, rho=0.1), _run(SAM, rho=0.1))
    assert not _same(_run(PGN, alpha=0.5, rho=0.1), _run(SAM, rho=0.1), exact=False)


def test_pgn_combines_clean_and_perturbed_gradients() -> None:
    # one step on a 1-D function, checked against the formula computed by hand
    w0, r, alpha, lr = 0.4, 0.3, 0.7, 0.1
    weight = nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    optimizer = PGN([weight], lr=lr, rho=r, alpha=alpha)
    optimizer.step(_closure(lambda: torch.sin(3 * weight).sum() + weight.pow(2).sum()))
    grad = lambda w: 3 * math.cos(3 * w) + 2 * w  # noqa: E731
    g1 = grad(w0)
    g2 = grad(w0 + r * math.copysign(1.0, g1))
    assert float(weight.detach()) == pytest.approx(w0 - lr * ((1 - alpha) * g1 + alpha * g2), abs=1e-12)
    loss0 = math.sin(3 * w0) + w0**2
    assert optimizer.last_step.objective == pytest.approx(loss0 + alpha * r * abs(g1))


def test_pgn_normalized_clean_gradient_variant() -> None:
    weights = nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))  # grad of 0.5|w|^2 is w, norm 5
    optimizer = PGN([weights], lr=1.0, rho=0.0, alpha=0.25, normalize_clean=True)
    optimizer.step(_closure(lambda: 0.5 * weights.pow(2).sum()))
    # g = 0.75 * w / 5 + 0.25 * w (rho = 0: the second gradient is taken at w too)
    expected = torch.tensor([3.0, -4.0], dtype=torch.float64) * (1 - 0.75 / 5 - 0.25)
    assert torch.allclose(weights.detach(), expected)


# ---------------------------------------------------------------- ESAM2
def test_esam2_with_one_step_size_is_sam() -> None:
    assert _same(_run(ESAM2, rho=0.07, multipliers=[1.0]), _run(SAM, rho=0.07))


def test_esam2_steps_with_the_gradient_at_the_largest_loss() -> None:
    # L(w) = sin(w) from w0 = 1.0: the gradient cos(1) > 0 points right; along it sin peaks at pi/2,
    # so among the radii 0.2, 0.55, 1.5 the largest loss is at 0.55 (w = 1.55), not at the largest radius.
    w0, lr = 1.0, 0.1
    weight = nn.Parameter(torch.tensor([w0], dtype=torch.float64))
    optimizer = ESAM2([weight], lr=lr, rho=0.1, multipliers=[2.0, 5.5, 15.0])
    assert optimizer.grad_evals_per_step == 4
    calls = [0]

    def closure() -> torch.Tensor:
        calls[0] += 1
        loss = torch.sin(weight).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert calls[0] == 4
    assert optimizer.last_step.extra["chosen_index"] == 1
    assert optimizer.last_step.losses == pytest.approx([math.sin(1.2), math.sin(1.55), math.sin(2.5)])
    assert float(weight.detach()) == pytest.approx(w0 - lr * math.cos(1.55), abs=1e-12)


@pytest.mark.parametrize("bad", [[], [1.0, -0.5], [0.0], [float("inf")], 2.0, "1,2"])
def test_esam2_rejects_bad_multipliers(bad) -> None:
    with pytest.raises(ValueError, match="multipliers"):
        ESAM2([nn.Parameter(torch.zeros(2))], lr=0.1, multipliers=bad)


# ---------------------------------------------------------------- RSAM
def test_rsam_without_noise_is_sam() -> None:
    assert _same(_run(RSAM, rho=0.08, noise_scale=0.0), _run(SAM, rho=0.08), exact=False)


def test_rsam_noise_is_filterwise() -> None:
    weight = torch.randn(4, 3, 2)
    weight[2] = 0.0  # a dead filter gets no noise
    bias = torch.randn(4)
    scale = 0.01
    noise = filterwise_noise([weight, bias], scale, torch.Generator().manual_seed(0))
    assert torch.equal(noise[0][2], torch.zeros(3, 2))
    # the same draw on a rescaled filter is rescaled by the same factor (noise proportional to ||w_i||)
    scaled = weight.clone()
    scaled[1] *= 7.0
    again = filterwise_noise([scaled, bias], scale, torch.Generator().manual_seed(0))
    assert torch.allclose(again[0][1], 7.0 * noise[0][1])
    assert torch.allclose(again[0][0], noise[0][0]) and torch.equal(again[1], noise[1])
    # on average ||delta_i|| ~ scale * ||w_i|| * sqrt(numel of the filter)
    many = torch.stack([filterwise_noise([weight], scale, torch.Generator().manual_seed(s))[0] for s in range(400)])
    ratio = many[:, 0].pow(2).sum(dim=(1, 2)).mean().sqrt() / (scale * weight[0].norm() * math.sqrt(6))
    assert ratio == pytest.approx(1.0, rel=0.1)


def test_rsam_update_follows_the_published_rule() -> None:
    torch.manual_seed(3)
    weights = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    target = torch.randn(3, 2, dtype=torch.float64)
    rho, scale, lam, lr = 0.2, 0.05, 2.0, 0.1

    def loss_at(w: torch.Tensor) -> torch.Tensor:
        return ((w - target) ** 3).abs().sum()

    def grad_at(w: torch.Tensor) -> torch.Tensor:
        w = w.detach().clone().requires_grad_(True)
        loss_at(w).backward()
        return w.grad

    optimizer = RSAM([weights], lr=lr, rho=rho, noise_scale=scale, grad_weight=lam, seed=11)
    w0 = weights.detach().clone()
    delta = filterwise_noise([w0], scale, torch.Generator().manual_seed(11))[0]
    v = lam * grad_at(w0 + delta) + delta
    expected = w0 - lr * grad_at(w0 + rho * v / v.norm())
    optimizer.step(_closure(lambda: loss_at(weights)))
    assert torch.allclose(weights.detach(), expected, atol=1e-10)


def test_rsam_noise_scale_can_be_scheduled() -> None:
    optimizer = RSAM([nn.Parameter(torch.zeros(2))], lr=0.1)
    optimizer.noise_scale = 2.5e-3
    assert optimizer.state_dict()["hyperparameters"]["noise_scale"] == 2.5e-3
    with pytest.raises(ValueError, match="noise_scale"):
        optimizer.noise_scale = -1.0


# ---------------------------------------------------------------- ESAM1 and compute budgets
def test_esam1_is_sam_with_tsam_budget() -> None:
    model, _ = _problem()
    optimizer = create_optimizer("esam1", model.parameters(), lr=0.1)
    assert isinstance(optimizer, SAM)
    entry = {e["name"]: e for e in list_optimizers()}["esam1"]
    assert entry["budget_reference"] == "tsam"
    tsam_evals = grad_evals_per_step("tsam")
    assert budget_multiplier("esam1") == tsam_evals / 2 == 3.0  # App. C.2: "SAM running 3x more iterations"
    assert equal_compute_steps("esam1", 100) == 300
    assert equal_compute_steps("esam1", 100, reference_settings={"num_samples": 5}) == 500
    assert equal_compute_steps("esam2", 10, reference="tsam") == 10  # 6 evaluations each
    assert equal_compute_steps("sam", 7, reference="tsam", seconds_per_step=(0.2, 0.5)) == math.ceil(7 * 2.5)
    with pytest.raises(ValueError, match="reference"):
        equal_compute_steps("sam", 10)
    with pytest.raises(ValueError, match="seconds_per_step"):
        budget_multiplier("esam1", seconds_per_step=(0.0, 1.0))


def test_declared_cost_follows_the_settings() -> None:
    assert grad_evals_per_step("esam2", multipliers=[1.0, 2.0]) == 3
    assert grad_evals_per_step("tsam-hmc", num_samples=2, sampler_options={"num_steps": 3}) == 8
    assert grad_evals_per_step("tsam-naive", num_samples=10) == 10
    assert grad_evals_per_step("erm") == 1  # alias of "sgd"
