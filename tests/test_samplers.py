"""The hmc (Eq. 11) and naive (App. C.3, Eq. 75) samplers: target distribution, special cases, cost,
diagnostics, and their use inside TSAM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from tiltedsam import TSAM
from tiltedsam.functional import draw_noise, restore
from tiltedsam.optim.samplers import SAMPLERS, HMCSampler, NaiveSampler, SamplingContext, make_sampler
from tiltedsam.optim.samplers.hmc import _drift
from conftest import closure_for, tiny_classifier

# ---------------------------------------------------------------- a 2-D target with a known density
DELTA = 2.0  # sample tilt
RADIUS = 1.0  # the ball ||eps|| <= 1
P_VALUE_FLOOR = 1e-3  # stated tolerance: a correct sampler fails the chi-square test with probability 0.1%


def _loss_2d(x: float, y: float) -> float:
    return x + 0.75 * y * y - 0.5 * x * y


def _loss_and_grad_2d(eps: torch.Tensor) -> tuple[float, torch.Tensor]:
    x, y = float(eps[0]), float(eps[1])
    return _loss_2d(x, y), torch.tensor([1.0 - 0.5 * y, 1.5 * y - 0.5 * x])


class _FixedStart(HMCSampler):
    """HMC whose eps_0 come from a given list (to start chains from exact target samples)."""

    def __init__(self, starts: list[np.ndarray], **settings) -> None:
        super().__init__(**settings)
        self.starts = list(starts)

    def _initial_perturbation(self, ctx, radius):
        return [torch.tensor(self.starts.pop(), dtype=torch.float32)]


def _draw_2d(sampler: HMCSampler, weights: torch.Tensor, generator: torch.Generator):
    """One ``sampler.draw`` on the 2-D problem at theta = 0; returns its context and (loss, grads)."""
    ctx = SamplingContext(params=[weights], origin=[torch.zeros(2)], rho=RADIUS, sample_tilt=DELTA,
                          generator=generator, loss_value=float)
    program = sampler.draw(ctx)
    try:
        next(program)
        while True:
            loss, grad = _loss_and_grad_2d(weights.detach())
            weights.grad = grad
            program.send(loss)
    except StopIteration as done:
        return ctx, done.value


def _run_2d(sampler: HMCSampler, count: int, seed: int = 0) -> tuple[np.ndarray, list[bool]]:
    """Drive ``sampler.draw`` ``count`` times; return the eps (the parameters end on them) and decisions."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.zeros(2, requires_grad=True)
    points = np.empty((count, 2))
    decisions: list[bool] = []
    for i in range(count):
        ctx, _ = _draw_2d(sampler, weights, generator)
        points[i] = weights.detach().numpy()
        decisions += ctx.diagnostics["hmc_accepted"]
    return points, decisions


def _bins(points: np.ndarray, radial: int = 4, angular: int = 8) -> np.ndarray:
    r2 = (points**2).sum(axis=1) / RADIUS**2
    angle = np.arctan2(points[:, 1], points[:, 0])
    ring = np.minimum((r2 * radial).astype(int), radial - 1)  # equal-area rings
    sector = np.minimum(((angle + np.pi) / (2 * np.pi) * angular).astype(int), angular - 1)
    return ring * angular + sector


def _target_bin_probabilities() -> np.ndarray:
    """exp(delta L) on the ball, integrated numerically on a fine grid (1201^2 points)."""
    grid = np.linspace(-RADIUS, RADIUS, 1201)
    xs, ys = np.meshgrid(grid, grid)
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    points = points[(points**2).sum(axis=1) <= RADIUS**2]
    density = np.exp(DELTA * _loss_2d(points[:, 0], points[:, 1]))
    mass = np.bincount(_bins(points), weights=density, minlength=32)
    return mass / mass.sum()


def _exact_samples(count: int, seed: int = 0) -> list[np.ndarray]:
    """Rejection sampling from exp(delta L) on the ball (L <= 2 there)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < count:
        p = rng.uniform(-RADIUS, RADIUS, 2)
        if p @ p <= RADIUS**2 and rng.uniform() < math.exp(DELTA * (_loss_2d(*p) - 2.0)):
            out.append(p)
    return out


def _chi_square_p(points: np.ndarray) -> float:
    counts = np.bincount(_bins(points), minlength=32)
    return float(stats.chisquare(counts, _target_bin_probabilities() * len(points)).pvalue)


def test_hmc_with_acceptance_leaves_the_tilted_density_invariant() -> None:
    # Chains started from exact samples stay exact after a transition of 3 large leapfrog steps
    # (acceptance ~25%): the Metropolis test, the reflection at the sphere and the returned rejected
    # points are all right. Without the test the same moves visibly distort the distribution.
    count = 1000
    starts = _exact_samples(count)
    settings = dict(num_steps=3, step_size=0.8, momentum_std=1.0)
    points, decisions = _run_2d(_FixedStart(starts, accept=True, **settings), count)
    assert np.all((points**2).sum(axis=1) <= RADIUS**2 * (1 + 1e-5))
    assert 0.05 < np.mean(decisions) < 0.95  # the test did reject and accept
    assert _chi_square_p(points) > P_VALUE_FLOOR
    points, decisions = _run_2d(_FixedStart(starts, accept=False, **settings), count)
    assert all(decisions)
    assert _chi_square_p(points) < 1e-6


@pytest.mark.slow
def test_hmc_from_a_uniform_start_converges_to_the_tilted_density() -> None:
    points, _ = _run_2d(HMCSampler(num_steps=2, step_size=0.5, num_transitions=10), 500)
    assert _chi_square_p(points) > P_VALUE_FLOOR


def test_hmc_rejection_returns_the_start_point_and_its_gradient() -> None:
    start = np.array([0.3, -0.2])
    sampler = _FixedStart([start] * 40, num_steps=2, step_size=5.0, accept=True)
    generator = torch.Generator().manual_seed(1)
    weights = torch.zeros(2, requires_grad=True)
    rejected = 0
    for _ in range(40):
        ctx, (loss, grads) = _draw_2d(sampler, weights, generator)
        if not ctx.diagnostics["hmc_accepted"][0]:
            rejected += 1
            expected_loss, expected_grad = _loss_and_grad_2d(torch.tensor(start, dtype=torch.float32))
            assert torch.allclose(weights.detach(), torch.tensor(start, dtype=torch.float32))
            assert loss == pytest.approx(expected_loss)
            assert torch.allclose(grads[0], expected_grad)
    assert rejected > 5


@pytest.mark.parametrize("integrator, factor", [("euler", 1.0), ("leapfrog", 0.5)])
def test_hmc_one_step_zero_momentum_no_acceptance_is_gradient_ascent(integrator: str, factor: float) -> None:
    # Sec. 4.2: with N = 1 and p_0 = 0, eps <- eps_0 + beta' grad L(theta + eps_0), beta' = c beta^2 delta / sigma^2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    x, y = torch.randn(16, 5), torch.randn(16, 1)
    params = list(model.parameters())
    origin = [p.detach().clone() for p in params]
    eps0 = [0.01 * torch.randn_like(p) for p in params]
    beta, delta, sigma = 0.02, 3.0, 0.5
    sampler = HMCSampler(num_steps=1, step_size=beta, momentum_std=sigma, momentum="zero", accept=False,
                         integrator=integrator, radius=10.0)
    sampler._initial_perturbation = lambda ctx, radius: [e.clone() for e in eps0]
    ctx = SamplingContext(params=params, origin=origin, rho=0.05, sample_tilt=delta,
                          generator=torch.Generator().manual_seed(0), loss_value=lambda loss: float(loss.detach()))
    grads_at_start = None
    evaluations = 0
    program = sampler.draw(ctx)
    try:
        next(program)
        while True:
            model.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if grads_at_start is None:
                grads_at_start = [p.grad.clone() for p in params]
            evaluations += 1
            program.send(loss)
    except StopIteration:
        pass
    assert evaluations == 2
    step = factor * beta**2 * delta / sigma**2
    for p, o, e, g in zip(params, origin, eps0, grads_at_start):
        assert torch.allclose(p.detach() - o, e + step * g, atol=1e-7)


def test_drift_reflects_inside_the_ball_and_keeps_the_momentum_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        eps = [0.5 * torch.rand(3, generator=gen, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
        momentum = [torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(2, generator=gen, dtype=torch.float64)]
        speed = sum(float((m**2).sum()) for m in momentum)
        _drift(eps, momentum, 3.0, 1.0)
        assert sum(float((e**2).sum()) for e in eps) <= 1.0 + 1e-9
        assert sum(float((m**2).sum()) for m in momentum) == pytest.approx(speed)


def test_drift_in_high_dimension_and_from_the_centre() -> None:
    # a grazing path along the sphere of a 500000-dim ball (eps uniform in the ball: on the sphere up
    # to float32 rounding, perhaps a hair outside) reflects about sqrt(d) times per radius travelled
    gen = torch.Generator().manual_seed(1)
    dim = 500_000
    eps = draw_noise([torch.zeros(dim)], "uniform", 0.05, gen)
    momentum = [torch.randn(dim, generator=gen)]
    speed = float(momentum[0].norm())
    reflections = _drift(eps, momentum, 0.05 / speed, 0.05)
    assert 50 < reflections < 100 * math.sqrt(dim)  # finished well before the safety cap
    assert float(eps[0].norm()) <= 0.05 * (1 + 1e-5)
    assert float(momentum[0].norm()) == pytest.approx(speed, rel=1e-5)
    # from eps = 0 the path is the line through p: out to the sphere and back
    eps = [torch.zeros(3, dtype=torch.float64)]
    momentum = [torch.tensor([0.0, 3.0, 4.0], dtype=torch.float64)]
    assert _drift(eps, momentum, 0.3, 1.0) == 1  # travels 1.5: 1 out, 0.5 back
    assert torch.allclose(eps[0], torch.tensor([0.0, 0.3, 0.4], dtype=torch.float64))
    assert torch.allclose(momentum[0], torch.tensor([0.0, -3.0, -4.0], dtype=torch.float64))


def test_hmc_reversible_drift_returns_with_flipped_momentum() -> None:
    # reflection keeps the position map reversible, which the exact Metropolis test needs
    eps = [torch.tensor([0.6, 0.1], dtype=torch.float64)]
    momentum = [torch.tensor([1.0, 0.4], dtype=torch.float64)]
    start = eps[0].clone()
    reflections = _drift(eps, momentum, 1.5, 1.0)
    assert reflections >= 1
    momentum[0].neg_()
    _drift(eps, momentum, 1.5, 1.0)
    assert torch.allclose(eps[0], start, atol=1e-12)


def _mlp_problem():
    model, x, y = tiny_classifier(0, inputs=4, hidden=8, classes=2)
    return model, closure_for(model, x, y)


@pytest.mark.parametrize("num_steps, num_transitions", [(1, 1), (3, 2)])
def test_hmc_cost_and_acceptance_diagnostics_in_tsam(num_steps: int, num_transitions: int) -> None:
    model, closure = _mlp_problem()
    calls = [0]

    def counted() -> torch.Tensor:
        calls[0] += 1
        return closure()

    optimizer = TSAM(model.parameters(), lr=0.1, num_samples=3, rho=0.1, sampler="hmc",
                     sampler_options={"num_steps": num_steps, "num_transitions": num_transitions}, seed=0)
    assert optimizer.grad_evals_per_step == 3 * (1 + num_steps * num_transitions)
    optimizer.step(counted)
    assert calls[0] == optimizer.grad_evals_per_step
    extra = optimizer.last_step.extra
    assert len(extra["hmc_accepted"]) == 3 * num_transitions
    assert extra["hmc_acceptance_rate"] == pytest.approx(np.mean(extra["hmc_accepted"]))
    assert all(0.0 <= p <= 1.0 for p in extra["hmc_accept_prob"])


def test_hmc_needs_a_finite_sample_tilt() -> None:
    model, closure = _mlp_problem()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = TSAM(model.parameters(), lr=0.1, tilt=math.inf, sampler="hmc")
    with pytest.raises(ValueError, match="sample_tilt"):
        optimizer.step(closure)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # restored, no step
    finite = TSAM(model.parameters(), lr=0.1, tilt=math.inf, sample_tilt=5.0, sampler="hmc")
    finite.step(closure)
    assert finite.last_step.extra["sample_tilt"] == 5.0


@pytest.mark.parametrize("settings, name", [
    ({"num_steps": 0}, "num_steps"), ({"num_transitions": 1.5}, "num_transitions"), ({"step_size": -0.1}, "step_size"),
    ({"momentum_std": 0.0}, "momentum_std"), ({"accept": "yes"}, "accept"), ({"integrator": "rk4"}, "integrator"),
    ({"momentum": "uniform"}, "momentum"), ({"init": "center"}, "init"), ({"radius": float("nan")}, "radius"),
])
def test_hmc_rejects_bad_settings(settings: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        HMCSampler(**settings)


@pytest.mark.parametrize("settings, name", [({"noise": "laplace"}, "noise"), ({"noise_std": 0.0}, "noise_std"),
                                            ({"radius": -1.0}, "radius")])
def test_naive_rejects_bad_settings(settings: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        NaiveSampler(**settings)


def test_sampler_registry_knows_all_three() -> None:
    assert set(SAMPLERS) >= {"ascent", "hmc", "naive"}
    assert make_sampler("hmc", num_steps=2).evaluations_per_sample() == 3
    assert make_sampler("naive").evaluations_per_sample() == 1
    with pytest.raises(ValueError, match="known samplers"):
        make_sampler("langevin")


# ---------------------------------------------------------------- naive sampling (App. C.3)
THETA, TILT = 0.3, 3.0


def _loss_1d(w):
    return torch.sin(3 * w) + w**2 if isinstance(w, torch.Tensor) else math.sin(3 * w) + w**2


def _dloss_1d(w: float) -> float:
    return 3 * math.cos(3 * w) + 2 * w


def _tilted_moments(tilt: float) -> tuple[float, float]:
    """Mean and variance of L'(theta + eps) under exp(tilt L(theta + eps)), eps uniform on [-1, 1]."""
    weight = lambda e: math.exp(tilt * _loss_1d(THETA + e))  # noqa: E731
    norm = integrate.quad(weight, -1, 1)[0]
    mean = integrate.quad(lambda e: weight(e) * _dloss_1d(THETA + e), -1, 1)[0] / norm
    second = integrate.quad(lambda e: weight(e) * _dloss_1d(THETA + e) ** 2, -1, 1)[0] / norm
    return mean, second - mean**2


def test_naive_sampling_converges_to_the_exact_tilted_gradient() -> None:
    weight = nn.Parameter(torch.tensor([THETA]))
    samples = 6000
    optimizer = TSAM([weight], lr=0.1, tilt=TILT, num_samples=samples, rho=1.0, sampler="naive", seed=0)
    assert optimizer.sample_tilt == 0.0 and optimizer.aggregation_tilt == TILT
    for evaluation in optimizer.manual_step(apply=False):
        loss = _loss_1d(weight).sum()
        loss.backward()
        evaluation.record(loss)
    estimate = float(weight.grad)
    exact, variance = _tilted_moments(TILT)
    plain_mean, _ = _tilted_moments(0.0)
    # self-normalised importance sampling: standard error ~ sqrt(tilted variance / ESS); allow 4 of them
    tolerance = 4 * math.sqrt(variance / optimizer.last_step.effective_sample_size)
    assert abs(estimate - exact) < tolerance
    assert abs(plain_mean - exact) > 5 * tolerance  # the tilt matters at this precision
    # samples cover [-1, 1] uniformly: losses match the uniform distribution of L(theta + eps)
    assert len(optimizer.last_step.losses) == samples


def test_naive_weights_are_exp_t_loss_and_explicit_sample_tilt_is_rejected() -> None:
    model, closure = _mlp_problem()
    optimizer = TSAM(model.parameters(), lr=0.1, tilt=5.0, num_samples=4, rho=0.5, sampler="naive", seed=0)
    optimizer.step(closure)
    losses = torch.tensor(optimizer.last_step.losses, dtype=torch.float64)
    expected = torch.softmax(5.0 * losses, dim=0)
    assert torch.allclose(torch.tensor(optimizer.last_step.weights, dtype=torch.float64), expected, atol=1e-6)
    with pytest.raises(ValueError, match="sample_tilt"):
        TSAM(model.parameters(), lr=0.1, tilt=5.0, sample_tilt=2.0, sampler="naive")


def test_naive_samples_lie_in_the_ball() -> None:
    weights = torch.zeros(3, requires_grad=True)
    sampler = NaiveSampler(noise="gaussian", noise_std=5.0)
    generator = torch.Generator().manual_seed(0)
    norms = []
    for _ in range(200):
        ctx = SamplingContext(params=[weights], origin=[torch.zeros(3)], rho=0.7, sample_tilt=0.0,
                              generator=generator, loss_value=float)
        program = sampler.draw(ctx)
        next(program)
        norms.append(float(weights.detach().norm()))
        program.close()
        restore(ctx.params, ctx.origin)
    assert max(norms) <= 0.7 + 1e-6 and min(norms) > 0
