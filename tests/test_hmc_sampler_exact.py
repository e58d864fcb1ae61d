"""The HMC sampler (Eq. 11) pinned exactly: its settings, the start point, the step size rule, one
transition against the update written out by hand (kick, drift, Metropolis test of Sec. 4.2 on a
quadratic loss), the reflection count, the billiard flight in the disc, and the requests it makes."""

from __future__ import annotations

import math

import pytest
import torch

from tiltedsam.functional import standard_normal_like
from tiltedsam.optim.base import Point
from tiltedsam.optim.samplers import HMCSampler, SamplingContext, make_sampler
from tiltedsam.optim.samplers import hmc as hmc_module
from tiltedsam.optim.samplers.hmc import _billiard_2d

SETTINGS = {"num_steps": 3, "step_size": 0.25, "momentum_std": 0.5, "accept": False, "num_transitions": 2,
            "integrator": "euler", "momentum": "zero", "init": "zero", "radius": 0.7}
DEFAULTS = {"num_steps": 1, "step_size": None, "momentum_std": 1.0, "accept": True, "num_transitions": 1,
            "integrator": "leapfrog", "momentum": "gaussian", "init": "uniform", "radius": None}


# ---------------------------------------------------------------- settings
def test_config_lists_every_setting_and_round_trips() -> None:
    sampler = HMCSampler(**SETTINGS)
    assert sampler.config() == {"name": "hmc", **SETTINGS}
    rebuilt = make_sampler("hmc", **{k: v for k, v in sampler.config().items() if k != "name"})
    assert rebuilt.config() == sampler.config()
    assert HMCSampler().config() == {"name": "hmc", **DEFAULTS}


def test_repr_shows_the_settings_but_not_the_name() -> None:
    expected = ", ".join(f"{k}={v!r}" for k, v in SETTINGS.items())
    assert repr(HMCSampler(**SETTINGS)) == f"HMCSampler({expected})"


@pytest.mark.parametrize("settings, name", [
    ({"num_steps": 0}, "num_steps"), ({"num_transitions": 0}, "num_transitions"),
    ({"step_size": 0.0}, "step_size"), ({"momentum_std": -1.0}, "momentum_std"), ({"accept": 1}, "accept"),
    ({"integrator": "rk4"}, "integrator"), ({"momentum": "uniform"}, "momentum"), ({"init": "centre"}, "init"),
    ({"radius": -0.1}, "radius"),
])
def test_bad_setting_message_starts_with_its_name(settings: dict, name: str) -> None:
    with pytest.raises(ValueError) as raised:
        HMCSampler(**settings)
    assert str(raised.value).startswith(f"{name} must be ")


def _context(params, rho: float, delta: float = 2.0, seed: int = 0) -> SamplingContext:
    return SamplingContext(params=params, origin=[torch.zeros_like(p) for p in params], rho=rho, sample_tilt=delta,
                           generator=torch.Generator().manual_seed(seed), loss_value=float)


def test_resolved_step_size_is_sigma_radius_over_n_sqrt_d() -> None:
    one = _context([torch.zeros(1)], rho=0.2)
    nine = _context([torch.zeros(4), torch.zeros(5)], rho=0.2)
    sampler = HMCSampler(num_steps=2, momentum_std=0.5)
    assert sampler.resolved_step_size(one) == pytest.approx(0.5 * 0.2 / 2)
    assert sampler.resolved_step_size(nine) == pytest.approx(0.5 * 0.2 / (2 * 3))
    # an explicit radius wins over TSAM's rho; an explicit step size wins over the rule
    assert HMCSampler(num_steps=2, momentum_std=0.5, radius=0.4).resolved_step_size(nine) == pytest.approx(0.4 / 12)
    assert HMCSampler(step_size=0.03, radius=0.4).resolved_step_size(nine) == 0.03


def test_initial_perturbation_uniform_zero_and_empty_ball() -> None:
    params = [torch.zeros(3), torch.zeros(2)]
    ctx = _context(params, rho=1.0)
    uniform = HMCSampler(init="uniform")._initial_perturbation(ctx, 1.0)
    norm = math.sqrt(sum(float((e**2).sum()) for e in uniform))
    assert 0.0 < norm <= 1.0 + 1e-6 and [e.shape for e in uniform] == [p.shape for p in params]
    for sampler, radius in [(HMCSampler(init="zero"), 1.0), (HMCSampler(init="zero"), 0.3), (HMCSampler(), 0.0)]:
        eps = sampler._initial_perturbation(ctx, radius)
        assert [e.shape for e in eps] == [p.shape for p in params]
        assert all(torch.count_nonzero(e) == 0 for e in eps)


def test_infinite_sample_tilt_message() -> None:
    ctx = _context([torch.zeros(2)], rho=0.1, delta=math.inf)
    with pytest.raises(ValueError, match=r"got inf: with tilt=inf pass an explicit finite sample_tilt to TSAM$"):
        next(HMCSampler().draw(ctx))


# ---------------------------------------------------------------- one draw, driven by hand
def _drive(sampler: HMCSampler, ctx: SamplingContext, loss_and_grad):
    """Run ``sampler.draw``; return (the requests it made, its (loss, grads))."""
    weights = ctx.params[0]
    requests = []
    program = sampler.draw(ctx)
    try:
        requests.append(next(program))
        while True:
            loss, grad = loss_and_grad(weights.detach().clone())
            weights.grad = grad
            requests.append(program.send(loss))
    except StopIteration as done:
        return requests, done.value


# L(eps) = C0 + A.eps - K |eps|^2 / 2 around theta = 0: exp(delta L) peaks at A / K, well inside the ball
C0, A, K = 0.7, torch.tensor([0.4, -0.2], dtype=torch.float64), 2.0


def _quadratic(eps: torch.Tensor) -> tuple[float, torch.Tensor]:
    return float(C0 + A @ eps - 0.5 * K * eps @ eps), A - K * eps


@pytest.mark.parametrize("integrator", ["leapfrog", "euler"])
def test_transitions_equal_the_hand_computed_kick_drift_and_metropolis_test(integrator: str) -> None:
    beta, delta, sigma, radius, transitions = 0.35, 2.0, 0.5, 3.0, 6
    sampler = HMCSampler(num_steps=1, step_size=beta, momentum_std=sigma, accept=True, num_transitions=transitions,
                         integrator=integrator, momentum="gaussian", init="zero", radius=radius)
    weights = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ctx = _context([weights], rho=0.01, delta=delta, seed=3)  # rho is not the radius here: radius= wins
    generator = torch.Generator().manual_seed(3)
    requests, (loss, grads) = _drive(sampler, ctx, _quadratic)

    # Eq. 11 by hand: p0 ~ N(0, sigma^2); kick by c beta delta grad L, drift by beta p / sigma^2, then
    # (leapfrog) the second half kick; accept with min{1, exp(delta dL - dK)}, K = |p|^2 / (2 sigma^2)
    first = 0.5 if integrator == "leapfrog" else 1.0
    eps = torch.zeros(2, dtype=torch.float64)
    probs, decisions = [], []
    for _ in range(transitions):
        start_loss, start_grad = _quadratic(eps)
        p = sigma * standard_normal_like([eps], generator)[0]
        start_kinetic = float(p @ p) / (2 * sigma**2)
        p = p + first * beta * delta * start_grad
        new = eps + beta / sigma**2 * p
        assert float(new.norm()) < radius  # no reflection on this path
        new_loss, new_grad = _quadratic(new)
        if integrator == "leapfrog":
            p = p + 0.5 * beta * delta * new_grad
        log_ratio = delta * (new_loss - start_loss) - (float(p @ p) / (2 * sigma**2) - start_kinetic)
        probs.append(math.exp(min(0.0, log_ratio)))
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        decisions.append(u < probs[-1])
        if decisions[-1]:
            eps = new
    assert min(probs) < 0.97 and max(probs) > 0.3  # the test sees the acceptance probability, not just 1
    assert ctx.diagnostics["hmc_accept_prob"] == pytest.approx(probs, rel=1e-9, abs=1e-12)
    assert ctx.diagnostics["hmc_accepted"] == decisions
    assert ctx.diagnostics["hmc_reflections"] == [0] * transitions
    assert ctx.diagnostics["hmc_acceptance_rate"] == pytest.approx(sum(decisions) / transitions)
    assert torch.allclose(weights.detach(), eps, atol=1e-12)
    assert loss == pytest.approx(_quadratic(eps)[0], abs=1e-12)
    assert torch.allclose(grads[0], _quadratic(eps)[1], atol=1e-12)
    assert [r.point for r in requests] == [Point.PERTURBED] * (1 + transitions)
    assert [r.name for r in requests] == ["hmc_start"] + [f"hmc_{i}_0" for i in range(transitions)]


def test_zero_momentum_euler_step_without_acceptance_inside_a_small_ball() -> None:
    # p0 = 0: eps = beta^2 delta / sigma^2 grad L(0); the ball (radius rho = 0.5 < 1) is not reached
    beta, delta, sigma = 0.3, 2.0, 0.6
    sampler = HMCSampler(num_steps=1, step_size=beta, momentum_std=sigma, accept=False, integrator="euler",
                         momentum="zero", init="zero")
    weights = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ctx = _context([weights], rho=0.5, delta=delta)
    _drive(sampler, ctx, _quadratic)
    assert torch.allclose(weights.detach(), beta**2 * delta / sigma**2 * A, atol=1e-12)
    assert ctx.diagnostics["hmc_accepted"] == [True]
    assert ctx.diagnostics["hmc_acceptance_rate"] == 1.0
    assert ctx.diagnostics["hmc_accept_prob"] == [pytest.approx(1.0)]  # the loss rises along the gradient


def test_an_empty_ball_leaves_theta_unperturbed() -> None:
    # with an explicit step size too: the momentum moves, eps must not (there is no ball to move in)
    for sampler in (HMCSampler(accept=False, num_steps=2), HMCSampler(step_size=0.1, accept=False, num_steps=2)):
        weights = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        ctx = _context([weights], rho=0.0)
        _drive(sampler, ctx, _quadratic)
        assert torch.count_nonzero(weights.detach()) == 0
        assert ctx.diagnostics["hmc_reflections"] == [0]


def test_reflections_are_counted_over_the_steps_of_a_transition() -> None:
    # linear loss, grad = a, |a| = 1, p0 = 0, euler, beta = delta = sigma = 1, radius 0.3, from the centre.
    # step 1: p = a, flight 1 along a: out 0.3 (1), across 0.6 (2), back 0.1 -> eps = -0.2 a, p = a.
    # step 2: p = 2a, flight 2: 0.5 (1), 0.6 (2), 0.6 (3), 0.3 -> eps = 0, p = -2a. Five reflections.
    a = torch.tensor([0.6, 0.8], dtype=torch.float64)
    sampler = HMCSampler(num_steps=2, step_size=1.0, momentum_std=1.0, accept=False, integrator="euler",
                         momentum="zero", init="zero")
    weights = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ctx = _context([weights], rho=0.3, delta=1.0)
    requests, (loss, _) = _drive(sampler, ctx, lambda eps: (float(a @ eps), a.clone()))
    assert ctx.diagnostics["hmc_reflections"] == [5]
    assert torch.allclose(weights.detach(), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert loss == pytest.approx(0.0, abs=1e-9)
    assert [r.name for r in requests] == ["hmc_start", "hmc_0_0", "hmc_0_1"]
    assert all(r.point is Point.PERTURBED for r in requests)


def test_a_non_finite_candidate_has_acceptance_probability_zero() -> None:
    def loss_and_grad(eps):
        return (C0 if torch.count_nonzero(eps) == 0 else math.inf), torch.ones(2, dtype=torch.float64)

    weights = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ctx = _context([weights], rho=1.0)
    _, (loss, _) = _drive(HMCSampler(step_size=0.1, init="zero", accept=True), ctx, loss_and_grad)
    assert ctx.diagnostics["hmc_accept_prob"] == [0.0]
    assert ctx.diagnostics["hmc_accepted"] == [False]
    assert loss == C0 and torch.count_nonzero(weights.detach()) == 0


# ---------------------------------------------------------------- the billiard in the disc
def test_billiard_puts_a_start_outside_the_circle_back_on_it_radially() -> None:
    position, velocity, momentum = [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]
    assert _billiard_2d(position, velocity, momentum, 2.5) == 0
    assert position == pytest.approx([1.5, 2.0], abs=1e-15)


def test_billiard_one_reflection_by_hand() -> None:
    # from (0, 1.2) at velocity (3.2, 0) in the disc of radius 2: hits (1.6, 1.2) at tau = 0.5, normal
    # n = (0.8, 0.6); v - 2 (v.n) n = (3.2, 0) - 5.12 (0.8, 0.6) = (-0.896, -3.072); 0.5 more of flight
    position, velocity, momentum = [0.0, 1.2], [3.2, 0.0], [6.4, 0.0]
    assert _billiard_2d(position, velocity, momentum, 2.0) == 1
    assert position == pytest.approx([1.6 - 0.448, 1.2 - 1.536], abs=1e-12)
    assert velocity == pytest.approx([-0.896, -3.072], abs=1e-12)
    assert momentum == pytest.approx([-1.792, -6.144], abs=1e-12)
    assert math.hypot(*position) <= 2.0


def test_billiard_reaching_the_circle_exactly_at_the_end_does_not_reflect() -> None:
    position, velocity, momentum = [0.0, 0.0], [0.5, 0.0], [1.0, 0.0]
    assert _billiard_2d(position, velocity, momentum, 0.5) == 0
    assert position == [0.5, 0.0] and velocity == [0.5, 0.0] and momentum == [1.0, 0.0]


def test_billiard_stops_reflecting_at_the_safety_cap(monkeypatch) -> None:
    # along a diameter of the unit disc at speed 10: walls at tau = 0.1, 0.3, 0.5; with a cap of 3 the
    # rest of the flight (0.5 at velocity -10 from x = 1) is taken straight
    monkeypatch.setattr(hmc_module, "_MAX_REFLECTIONS", 3)
    position, velocity, momentum = [0.0, 0.0], [10.0, 0.0], [1.0, 0.0]
    assert _billiard_2d(position, velocity, momentum, 1.0) == 3
    assert position == pytest.approx([-4.0, 0.0], abs=1e-12)
    assert velocity == [-10.0, 0.0] and momentum == [-1.0, 0.0]
