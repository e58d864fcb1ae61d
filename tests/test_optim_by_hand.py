"""One-step updates of every optimizer computed by hand, on a quadratic small enough to do on paper.

``L(w) = 1/2 sum_i a_i w_i^2`` over three coordinates split into two parameter tensors (shapes (1,)
and (2,)), so that global norms differ from per-tensor ones. Expected parameters, returned objectives,
diagnostics and noise are written with Python floats from the papers' formulas; the noise draws come
from a ``torch.Generator`` seeded with the optimizer's seed (the same draws), but every step built on
them is computed here by hand, never by a library helper. So a bug inside a helper shared by two
optimizers (ascent, noise clipping, accumulator, shell) cannot cancel out, as it can in the
equivalence tests (TSAM == SAM, manual == closure).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from tiltedsam import create_optimizer, list_optimizers
from tiltedsam.optim import ERM, ESAM2, PGN, RSAM, SAM, TSAM
from tiltedsam.functional import check_hyperparameter
from tiltedsam.optim.base import BASE_SETTING_RANGES, check_param_group
from tiltedsam.functional import draw_noise
from tiltedsam.tilt import NonFiniteLossError, effective_sample_size, tilted_stats

A = [1.0, 3.0, -2.0]  # diagonal Hessian
W0 = [0.5, -1.0, 0.25]
EPS = 1e-12  # SAM's norm guard
SEED = 1234
LN3 = math.log(3.0)
NAMES = [entry["name"] for entry in list_optimizers()]


# ----------------------------------------------------------------------------- the problem and hand math
def make_params(w=W0) -> list[nn.Parameter]:
    return [nn.Parameter(torch.tensor(w[:1], dtype=torch.float64)),
            nn.Parameter(torch.tensor(w[1:], dtype=torch.float64))]


def flat(params) -> list[float]:
    return [x for p in params for x in p.detach().flatten().tolist()]


def torch_loss(params) -> torch.Tensor:
    a = torch.tensor(A, dtype=torch.float64)
    w = torch.cat([p.flatten() for p in params])
    return 0.5 * (a * w * w).sum()


def make_closure(params, calls: list[int] | None = None):
    def closure() -> torch.Tensor:
        if calls is not None:
            calls.append(1)
        loss = torch_loss(params)
        loss.backward()
        return loss
    return closure


def loss(w) -> float:
    return 0.5 * sum(a * x * x for a, x in zip(A, w))


def grad(w) -> list[float]:
    return [a * x for a, x in zip(A, w)]


def norm(v) -> float:
    return math.sqrt(sum(x * x for x in v))


def add(u, v, scale=1.0) -> list[float]:
    return [x + scale * y for x, y in zip(u, v)]


def ascend(w, g, rho) -> list[float]:
    """SAM's ascent w + rho g / (||g|| + 1e-12) (Foret et al. 2021, Eq. 2)."""
    n = norm(g) + EPS
    return [x + rho * gi / n for x, gi in zip(w, g)]


def sgd(w, g, lr) -> list[float]:
    return [x - lr * gi for x, gi in zip(w, g)]


def close(actual, expected, rel=1e-12) -> None:
    assert actual == pytest.approx(expected, rel=rel, abs=1e-15)


def close32(returned: torch.Tensor, expected: float) -> None:
    """step() returns the objective as a default-dtype (float32) tensor; last_step holds the float64 value."""
    assert isinstance(returned, torch.Tensor) and returned.dim() == 0
    assert float(returned) == pytest.approx(expected, rel=2e-7)


def gaussian_noise(gen: torch.Generator, shapes, radius: float, std: float) -> list[float]:
    """The TSAM authors' noise by hand: z ~ N(0, std^2 I) (torch's draws), clipped to global norm radius."""
    z = [x for shape in shapes for x in torch.randn(shape, generator=gen, dtype=torch.float64).flatten().tolist()]
    total = norm(z)  # the norm of the *whole* vector: clipping is global, not per tensor
    scale = std * min(1.0, radius / (std * total + EPS))
    return [scale * x for x in z]


SHAPES = [(1,), (2,)]


# ----------------------------------------------------------------------------- ERM / SGD, weight decay
def test_erm_two_steps_of_sgd_with_momentum_dampening_and_weight_decay_by_hand() -> None:
    lr, mom, damp, wd = 0.1, 0.9, 0.25, 0.01
    params = make_params()
    opt = ERM(params, torch.optim.SGD, lr=lr, momentum=mom, dampening=damp, weight_decay=wd)
    out = opt.step(make_closure(params))
    d1 = add(grad(W0), W0, wd)  # weight decay added once to the gradient
    w1 = sgd(W0, d1, lr)  # first step: the buffer is the gradient itself (no dampening)
    close32(out, loss(W0))  # step() returns the loss at theta, as a tensor
    assert opt.last_step.objective == loss(W0)
    close(flat(params), w1)
    out = opt.step(make_closure(params))
    d2 = add(grad(w1), w1, wd)
    buf = [mom * b + (1 - damp) * d for b, d in zip(d1, d2)]
    close(flat(params), sgd(w1, buf, lr))
    close32(out, loss(w1))
    assert opt.step_count == 2
    assert opt.last_step.losses == [pytest.approx(loss(w1))] and opt.last_step.weights == [1.0]
    assert opt.last_step.effective_sample_size == 1.0


@pytest.mark.parametrize("name", ["sgd", "sam", "tsam", "pgn", "esam2", "rsam"])
def test_weight_decay_is_applied_exactly_once(name: str) -> None:
    """Same optimizer, weight decay 0 vs wd: the updates differ by exactly lr * wd * w (SGD, no momentum)."""
    lr, wd = 0.1, 0.3
    moved = {}
    for decay in (0.0, wd):
        params = make_params()
        opt = create_optimizer(name, params, lr=lr, weight_decay=decay, seed=SEED)
        opt.step(make_closure(params))
        moved[decay] = flat(params)
    close([a - b for a, b in zip(moved[0.0], moved[wd])], [lr * wd * x for x in W0], rel=1e-9)


# ----------------------------------------------------------------------------- SAM and ASAM
def test_sam_two_steps_by_hand_with_momentum_and_weight_decay() -> None:
    lr, rho, mom, wd = 0.05, 0.2, 0.5, 0.01
    params = make_params()
    opt = SAM(params, torch.optim.SGD, rho=rho, lr=lr, momentum=mom, weight_decay=wd)
    out = opt.step(make_closure(params))
    e1 = ascend(W0, grad(W0), rho)
    d1 = add(grad(e1), W0, wd)  # gradient at theta + eps, weight decay at the restored theta
    w1 = sgd(W0, d1, lr)
    close(flat(params), w1)
    close32(out, loss(e1))  # the SAM objective estimate: the loss at theta + eps
    close(opt.last_step.objective, loss(e1))
    close(opt.last_step.extra["clean_loss"], loss(W0))
    opt.step(make_closure(params))
    e2 = ascend(w1, grad(w1), rho)
    d2 = add(grad(e2), w1, wd)
    close(flat(params), sgd(w1, [mom * a + b for a, b in zip(d1, d2)], lr))


@pytest.mark.parametrize("eta", [0.01, 0.0, 0.5])
def test_asam_one_step_by_hand(eta: float) -> None:
    """ASAM (Kwon et al. 2021): eps = rho T^2 g / ||T g||, T = |w| + eta. A zero weight shows eta's role:
    davda54/sam (eta = 0) never perturbs it, the ASAM paper's eta = 0.01 does."""
    w = [0.0, -1.0, 0.25]
    lr, rho = 0.1, 0.5
    params = make_params(w)
    opt = SAM(params, torch.optim.SGD, rho=rho, adaptive=True, adaptive_eta=eta, lr=lr)
    opt.step(make_closure(params))
    g = grad(w)
    t = [abs(x) + eta for x in w]
    n = norm([ti * gi for ti, gi in zip(t, g)]) + EPS
    e = [rho * ti * ti * gi / n for ti, gi in zip(t, g)]
    close(flat(params), sgd(w, grad(add(w, e)), lr))


def test_asam_registry_entry_uses_eta_001_and_rho_05() -> None:
    params = make_params()
    opt = create_optimizer("asam", params, lr=0.1)
    assert opt.hyperparameters["adaptive"] is True
    assert opt.hyperparameters["adaptive_eta"] == 0.01 and opt.rho == 0.5


def test_sam_honours_per_group_rho_and_adaptive_like_davda54() -> None:
    lr, rho_default, rho_group = 0.1, 0.05, 0.3
    first, rest = make_params()
    opt = SAM([{"params": [first], "rho": rho_group}, {"params": [rest]}], torch.optim.SGD, rho=rho_default, lr=lr)
    opt.step(make_closure([first, rest]))
    g = grad(W0)
    n = norm(g) + EPS  # one global norm over both groups
    e = [rho_group * g[0] / n, rho_default * g[1] / n, rho_default * g[2] / n]
    close(flat([first, rest]), sgd(W0, grad(add(W0, e)), lr))

    # mixed: the second group adaptive (T = |w| + eta), the first plain; the norm is of (g1, T g2)
    first, rest = make_params()
    opt = SAM([{"params": [first]}, {"params": [rest], "adaptive": True, "adaptive_eta": 0.1}],
              torch.optim.SGD, rho=rho_default, lr=lr)
    opt.step(make_closure([first, rest]))
    t = [1.0, abs(W0[1]) + 0.1, abs(W0[2]) + 0.1]
    n = norm([ti * gi for ti, gi in zip(t, g)]) + EPS
    e = [rho_default * ti * ti * gi / n for ti, gi in zip(t, g)]
    close(flat([first, rest]), sgd(W0, grad(add(W0, e)), lr))


def test_sam_group_without_rho_follows_the_optimizer_value_and_first_step_honours_groups() -> None:
    lr = 0.1
    first, rest = make_params()
    opt = SAM([{"params": [first], "rho": 0.0}, {"params": [rest]}], torch.optim.SGD, rho=0.05, lr=lr)
    opt.hyperparameters["rho"] = 0.2  # the default is read at each step
    torch_loss([first, rest]).backward()
    opt.first_step(zero_grad=True)
    assert first.grad is None and rest.grad is None
    g = grad(W0)
    n = norm(g) + EPS
    e = [0.0, 0.2 * g[1] / n, 0.2 * g[2] / n]
    close(flat([first, rest]), add(W0, e))  # the davda54-style first step moves to theta + eps
    torch_loss([first, rest]).backward()
    opt.second_step(zero_grad=True)
    assert first.grad is None and rest.grad is None
    close(flat([first, rest]), sgd(W0, grad(add(W0, e)), lr))
    assert opt.step_count == 1


@pytest.mark.parametrize("group,name", [({"rho": -0.1}, "rho"), ({"rho": float("nan")}, "rho"),
                                        ({"adaptive": "yes"}, "adaptive"), ({"adaptive_eta": float("inf")}, "adaptive_eta"),
                                        ({"lr": float("nan")}, "lr")])
def test_sam_rejects_bad_group_settings_at_construction_and_in_add_param_group(group, name) -> None:
    first, rest = make_params()
    with pytest.raises(ValueError, match=rf"{name} \(param group 1\)"):
        SAM([{"params": [first]}, {"params": [rest], **group}], torch.optim.SGD, lr=0.1)
    opt = SAM([first], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=rf"{name} \(param group 1\)"):
        opt.add_param_group({"params": [rest], **group})


# ----------------------------------------------------------------------------- TSAM
def tsam_by_hand(w, *, lr, rho, tilt, sample_tilt, radius, std, num_samples, gen):
    """Algorithm 1 + 2 by hand: noise, one normalised ascent step, weights exp((t - delta) L_j)."""
    points, losses = [], []
    for _ in range(num_samples):
        delta = gaussian_noise(gen, SHAPES, radius, std) if radius > 0 else [0.0] * len(w)
        noisy = add(w, delta)
        point = ascend(noisy, grad(noisy), rho)
        points.append(point)
        losses.append(loss(point))
    aggregation = tilt - sample_tilt
    top = max(losses)
    raw = [math.exp(aggregation * (x - top)) for x in losses]
    weights = [r / sum(raw) for r in raw]
    g = [sum(wj * grad(p)[i] for wj, p in zip(weights, points)) for i in range(len(w))]
    objective = math.log(sum(math.exp(tilt * (x - top)) for x in losses) / num_samples) / tilt + top
    return sgd(w, g, lr), losses, weights, objective


@pytest.mark.parametrize("num_samples", [1, 2])
def test_tsam_without_noise_is_sams_update_by_hand(num_samples: int) -> None:
    lr, rho = 0.1, 0.15
    params = make_params()
    opt = TSAM(params, torch.optim.SGD, lr=lr, rho=rho, tilt=3.0, num_samples=num_samples, noise_radius=0.0)
    calls: list[int] = []
    out = opt.step(make_closure(params, calls))
    e = ascend(W0, grad(W0), rho)
    close(flat(params), sgd(W0, grad(e), lr))
    assert len(calls) == 2 * num_samples
    close32(out, loss(e))  # tilted mean of equal losses
    close(opt.last_step.objective, loss(e))
    assert opt.last_step.weights == pytest.approx([1 / num_samples] * num_samples)
    assert opt.last_step.effective_sample_size == pytest.approx(num_samples)


@pytest.mark.parametrize("num_samples,radius,std,tilt,sample_tilt", [
    (1, 0.1, 1.0, 4.0, None),  # clipped: the noise lies on the sphere of radius 0.1
    (2, 0.1, 1.0, 4.0, None),
    (2, 100.0, 0.3, 4.0, 0.0),  # not clipped: z * std; the authors' weights exp(t L)
    (3, 0.5, 1.0, 10.0, 2.0),
])
def test_tsam_with_noise_by_hand(num_samples, radius, std, tilt, sample_tilt) -> None:
    lr, rho = 0.1, 0.05
    params = make_params()
    opt = TSAM(params, torch.optim.SGD, lr=lr, rho=rho, tilt=tilt, num_samples=num_samples, noise_radius=radius,
               noise_std=std, sample_tilt=sample_tilt, seed=SEED)
    out = opt.step(make_closure(params))
    delta = tilt / 2 if sample_tilt is None else sample_tilt
    expected, losses, weights, objective = tsam_by_hand(
        W0, lr=lr, rho=rho, tilt=tilt, sample_tilt=delta, radius=radius, std=std, num_samples=num_samples,
        gen=torch.Generator().manual_seed(SEED))
    close(flat(params), expected, rel=1e-10)
    close(opt.last_step.losses, losses, rel=1e-10)
    close(opt.last_step.weights, weights, rel=1e-9)
    close(opt.last_step.objective, objective, rel=1e-10)  # the tilted mean at t (not t - delta)
    close32(out, objective)  # and step() returns it
    ess = sum(weights) ** 2 / sum(x * x for x in weights)
    close(opt.last_step.effective_sample_size, ess, rel=1e-9)


def test_tsam_infinite_tilt_steps_with_the_gradient_at_the_largest_loss() -> None:
    lr, rho = 0.1, 0.05
    params = make_params()
    opt = TSAM(params, torch.optim.SGD, lr=lr, rho=rho, tilt=math.inf, num_samples=3, noise_radius=0.5, seed=SEED)
    opt.step(make_closure(params))
    gen = torch.Generator().manual_seed(SEED)
    points = []
    for _ in range(3):
        noisy = add(W0, gaussian_noise(gen, SHAPES, 0.5, 1.0))
        points.append(ascend(noisy, grad(noisy), rho))
    worst = max(points, key=loss)
    close(flat(params), sgd(W0, grad(worst), lr), rel=1e-10)
    assert sorted(opt.last_step.weights) == [0.0, 0.0, 1.0]


def test_noise_is_clipped_in_the_global_norm_not_per_tensor() -> None:
    params = [torch.zeros(1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    radius = 0.2
    noise = draw_noise(params, "gaussian", radius, torch.Generator().manual_seed(SEED), std=1.0)
    expected = gaussian_noise(torch.Generator().manual_seed(SEED), SHAPES, radius, 1.0)
    close(flat(noise), expected)
    assert norm(flat(noise)) == pytest.approx(radius, rel=1e-12)  # the whole vector on the sphere
    assert [t.norm().item() for t in noise] != pytest.approx([radius, radius])  # not each tensor
    # uniform in the ball: a direction times radius * u^(1/d), u drawn after the normals
    gen = torch.Generator().manual_seed(SEED)
    z = [x for shape in SHAPES for x in torch.randn(shape, generator=gen, dtype=torch.float64).flatten().tolist()]
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    expected = [x * radius * u ** (1 / 3) / norm(z) for x in z]
    noise = draw_noise(params, "uniform", radius, torch.Generator().manual_seed(SEED))
    close(flat(noise), expected, rel=1e-10)
    assert flat(draw_noise(params, "gaussian", 0.0, torch.Generator().manual_seed(SEED))) == [0.0, 0.0, 0.0]


def test_tsam_uniform_noise_one_sample_by_hand() -> None:
    lr, rho, radius = 0.1, 0.05, 0.3
    params = make_params()
    opt = TSAM(params, torch.optim.SGD, lr=lr, rho=rho, tilt=2.0, num_samples=1, noise="uniform",
               noise_radius=radius, seed=SEED)
    opt.step(make_closure(params))
    gen = torch.Generator().manual_seed(SEED)
    z = [x for shape in SHAPES for x in torch.randn(shape, generator=gen, dtype=torch.float64).flatten().tolist()]
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    noisy = add(W0, [x * radius * u ** (1 / 3) / norm(z) for x in z])
    close(flat(params), sgd(W0, grad(ascend(noisy, grad(noisy), rho)), lr), rel=1e-10)
    close(opt.last_step.extra["noise_loss"], [loss(noisy)], rel=1e-10)


# ----------------------------------------------------------------------------- PGN, RSAM, ESAM2
@pytest.mark.parametrize("normalize_clean", [False, True])
def test_pgn_one_step_by_hand(normalize_clean: bool) -> None:
    lr, r, alpha = 0.1, 0.2, 0.7
    params = make_params()
    opt = PGN(params, torch.optim.SGD, lr=lr, rho=r, alpha=alpha, normalize_clean=normalize_clean)
    out = opt.step(make_closure(params))
    g1 = grad(W0)
    g2 = grad(ascend(W0, g1, r))
    clean_weight = (1 - alpha) / (norm(g1) + EPS) if normalize_clean else 1 - alpha
    close(flat(params), sgd(W0, [clean_weight * a + alpha * b for a, b in zip(g1, g2)], lr))
    close(opt.last_step.objective, loss(W0) + alpha * r * norm(g1))  # L + lambda ||g||, lambda = alpha r
    close32(out, opt.last_step.objective)
    close(opt.last_step.extra["perturbed_loss"], loss(ascend(W0, g1, r)))
    close(opt.last_step.extra["clean_loss"], loss(W0))
    close(opt.last_step.extra["clean_grad_norm"], norm(g1))
    close(opt.last_step.losses, [loss(W0), loss(ascend(W0, g1, r))])
    assert opt.last_step.weights == pytest.approx([1 - alpha, alpha])
    assert math.isnan(opt.last_step.effective_sample_size)  # a signed mixture has no effective sample size


def test_rsam_one_step_by_hand_with_filterwise_noise() -> None:
    lr, rho, gamma, lam = 0.1, 0.05, 0.2, 2.0
    matrix = nn.Parameter(torch.tensor([[0.5, -1.0], [0.25, 2.0]], dtype=torch.float64))
    vector = nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    a = [1.0, 3.0, -2.0, 0.5, 1.5, 2.5]
    w0 = [0.5, -1.0, 0.25, 2.0, 3.0, -4.0]

    def closure():
        w = torch.cat([matrix.flatten(), vector])
        value = 0.5 * (torch.tensor(a, dtype=torch.float64) * w * w).sum()
        value.backward()
        return value

    opt = RSAM([matrix, vector], torch.optim.SGD, lr=lr, rho=rho, noise_scale=gamma, grad_weight=lam, seed=SEED)
    out = opt.step(closure)
    gen = torch.Generator().manual_seed(SEED)
    z = torch.randn((2, 2), generator=gen, dtype=torch.float64).flatten().tolist()
    z += torch.randn((2,), generator=gen, dtype=torch.float64).tolist()
    row0, row1 = norm(w0[0:2]), norm(w0[2:4])  # one filter = one row of the matrix
    whole = norm(w0[4:6])  # a vector is one filter
    filters = [row0, row0, row1, row1, whole, whole]
    delta = [gamma * f * zi for f, zi in zip(filters, z)]
    hand_grad = lambda w: [ai * x for ai, x in zip(a, w)]  # noqa: E731
    hand_loss = lambda w: 0.5 * sum(ai * x * x for ai, x in zip(a, w))  # noqa: E731
    noisy = add(w0, delta)
    v = add([lam * g for g in hand_grad(noisy)], delta)
    point = ascend(w0, v, rho)  # the ascent starts at theta, not at theta + delta
    close(flat([matrix, vector]), sgd(w0, hand_grad(point), lr), rel=1e-10)
    close(opt.last_step.objective, hand_loss(point), rel=1e-10)
    close32(out, hand_loss(point))
    close(opt.last_step.extra["noise_loss"], hand_loss(noisy), rel=1e-10)


def test_esam2_ignore_skips_a_nonfinite_step_size_and_raise_restores() -> None:
    lr, rho = 0.1, 0.1
    multipliers = [1.0, 2.0, 3.0]

    def run(policy: str, bad: set[int]):
        params = make_params()
        opt = ESAM2(params, torch.optim.SGD, lr=lr, rho=rho, multipliers=multipliers, nonfinite=policy)
        calls: list[int] = []

        def closure():
            calls.append(1)
            value = torch_loss(params)
            if len(calls) - 2 in bad:  # call 1 is the clean point, then one call per step size
                value = value * float("nan")
            value.backward()
            return value
        return params, opt, closure

    params, opt, closure = run("ignore", {2})  # the largest radius has the largest loss, but it is NaN
    opt.step(closure)
    g = grad(W0)
    chosen = ascend(W0, g, rho * 2.0)
    close(flat(params), sgd(W0, grad(chosen), lr))
    assert opt.last_step.extra["chosen_index"] == 1
    params, opt, closure = run("ignore", {0, 1, 2})
    with pytest.raises(NonFiniteLossError, match=r"^ESAM2: every step size gave a non-finite loss \(\[nan, nan, nan\]\); "
                       "no step was taken and the parameters keep their values from before this step$"):
        opt.step(closure)
    assert flat(params) == W0 and opt.step_count == 0
    params, opt, closure = run("raise", {1})
    with pytest.raises(NonFiniteLossError, match="step_size_1"):
        opt.step(closure)
    assert flat(params) == W0


# ----------------------------------------------------------------------------- the shell: APIs, state
@pytest.mark.parametrize("make", [
    lambda p: SAM(p, torch.optim.SGD, lr=0.1, rho=0.15),
    lambda p: TSAM(p, torch.optim.SGD, lr=0.1, rho=0.15, num_samples=2, noise_radius=0.0, tilt=1.0),
])
def test_manual_api_gives_the_hand_computed_update(make) -> None:
    expected = sgd(W0, grad(ascend(W0, grad(W0), 0.15)), 0.1)
    params = make_params()
    opt = make(params)
    labels = []
    for evaluation in opt.manual_step():
        labels.append(evaluation.label)
        assert all(p.grad is None for p in params)  # cleared before each body
        value = torch_loss(params)
        value.backward()
        evaluation.record(value)
    close(flat(params), expected)
    assert opt.step_count == 1 and len(labels) == opt.grad_evals_per_step
    # apply=False: the parameters are restored and .grad holds the update's gradient; the caller steps
    params = make_params()
    opt = make(params)
    for evaluation in opt.manual_step(apply=False):
        value = torch_loss(params)
        value.backward()
        evaluation.record(value.item())  # a float is accepted too
    assert flat(params) == W0
    close([x for p in params for x in p.grad.flatten().tolist()], grad(ascend(W0, grad(W0), 0.15)))
    opt.base_step()
    close(flat(params), expected)


def test_zero_grad_keeps_or_drops_the_tensors() -> None:
    params = make_params()
    opt = SAM(params, torch.optim.SGD, lr=0.1)
    torch_loss(params).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0.0 for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_loading_a_state_into_an_optimizer_that_has_already_stepped() -> None:
    """The loaded optimizer must forget its own momentum, step count and noise generator position."""
    def build(params, seed):
        return TSAM(params, torch.optim.SGD, lr=0.05, momentum=0.9, rho=0.05, num_samples=2, noise_radius=0.3,
                    tilt=2.0, seed=seed)

    params = make_params()
    reference = build(params, SEED)
    reference.step(make_closure(params))
    saved_state = copy.deepcopy(reference.state_dict())
    saved_weights = flat(params)
    reference.step(make_closure(params))
    expected = flat(params)

    other = make_params([2.0, 1.0, -1.0])
    stepped = build(other, seed=99)
    for _ in range(3):  # its own momentum, step count and generator position: all must be replaced
        stepped.step(make_closure(other))
    assert stepped._generator is not None
    stepped.load_state_dict(saved_state)
    with torch.no_grad():
        for p, value in zip(other, (saved_weights[:1], saved_weights[1:])):
            p.copy_(torch.tensor(value, dtype=torch.float64))
    assert stepped.step_count == 1 and stepped.seed == SEED
    stepped.step(make_closure(other))
    assert flat(other) == expected  # bit for bit
    assert stepped.step_count == 2


def test_state_dict_of_a_fresh_optimizer_and_a_bad_one() -> None:
    params = make_params()
    opt = SAM(params, torch.optim.SGD, lr=0.1, seed=7)
    state = opt.state_dict()
    assert state["generator"] is None and state["step_count"] == 0 and state["seed"] == 7
    assert state["optimizer"] == "SAM" and state["hyperparameters"]["rho"] == 0.05
    with pytest.raises(ValueError, match="saved by 'SAM', cannot load it into ERM"):
        ERM(make_params(), torch.optim.SGD, lr=0.1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"^not a SAM state dict \(expected format 'tiltedsam.optimizer/1', got 'other'\)$"):
        opt.load_state_dict({"format": "other"})
    with pytest.raises(ValueError, match=r"^not a SAM state dict \(expected format 'tiltedsam.optimizer/1', got 'list'\)$"):
        opt.load_state_dict([])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- non-finite losses, everywhere
def closure_calls_of_next_step(name: str, opt) -> int:
    """How many times the next step will call its closure, counted on a twin restored from ``opt``'s state
    (``grad_evals_per_step`` is an average cost: fractional for sub-batch ascent, lower between lazy refreshes)."""
    twin_params = make_params()
    twin = create_optimizer(name, twin_params, lr=0.1, momentum=0.9, seed=SEED)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # the base state is shared by reference otherwise
    calls: list[int] = []
    twin.step(make_closure(twin_params, calls))
    return len(calls)


def nan_at(params, call: int, value: float = float("nan")):
    calls: list[int] = []

    def closure():
        calls.append(1)
        out = torch_loss(params)
        if len(calls) == call:
            out = out * value
        out.backward()
        return out
    return closure


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_optimizer_raises_on_a_nonfinite_loss_with_parameters_and_state_intact(name: str, bad: float) -> None:
    params = make_params()
    opt = create_optimizer(name, params, lr=0.1, momentum=0.9, seed=SEED)
    opt.step(make_closure(params))  # a momentum buffer exists now
    weights = flat(params)
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in params]
    for call in sorted({1, closure_calls_of_next_step(name, opt)}):  # the first and the last evaluation of the step
        with pytest.raises(NonFiniteLossError):
            opt.step(nan_at(params, call, bad))
        assert flat(params) == weights
        assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(params, buffers))
        assert opt.step_count == 1


@pytest.mark.parametrize("name", NAMES)
def test_ignore_is_accepted_only_where_a_point_can_be_dropped(name: str) -> None:
    opt = create_optimizer(name, make_params(), lr=0.1)
    if "ignore" in opt.nonfinite_policies:
        assert type(opt).__name__ in ("TSAM", "ESAM2")
        create_optimizer(name, make_params(), lr=0.1, nonfinite="ignore")
    else:
        with pytest.raises(ValueError, match="nonfinite must be one of \\['raise'\\].*nothing to ignore"):
            create_optimizer(name, make_params(), lr=0.1, nonfinite="ignore")
    with pytest.raises(ValueError, match="nonfinite must be .*got 'skip'"):
        create_optimizer(name, make_params(), lr=0.1, nonfinite="skip")


def test_the_error_names_the_optimizer_evaluation_and_step() -> None:
    params = make_params()
    opt = SAM(params, torch.optim.SGD, lr=0.1)
    opt.step(make_closure(params))
    with pytest.raises(NonFiniteLossError, match=r"SAM: the loss at evaluation 'perturbed' of step 1 is inf"):
        opt.step(nan_at(params, 2, float("inf")))
    # a NaN at theta poisons the ascent too; the error names the clean point or, where the clean loss is
    # only read after the perturbed one (one host sync per step), the perturbed point
    with pytest.raises(NonFiniteLossError, match=r"evaluation '(clean|perturbed)' of step 1 is nan"):
        opt.step(nan_at(params, 1))
    assert isinstance(NonFiniteLossError("x"), FloatingPointError) and isinstance(NonFiniteLossError("x"), ValueError)


def test_davda54_first_step_refuses_a_nonfinite_gradient() -> None:
    params = make_params()
    opt = SAM(params, torch.optim.SGD, lr=0.1)
    (torch_loss(params) * float("nan")).backward()
    with pytest.raises(NonFiniteLossError, match="gradient norm is nan"):
        opt.first_step()
    assert flat(params) == W0


# ----------------------------------------------------------------------------- hyper-parameter validation
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("key,bad", [("lr", float("nan")), ("lr", float("inf")), ("lr", -0.1),
                                     ("momentum", float("nan")), ("momentum", -0.5), ("weight_decay", float("inf")),
                                     ("weight_decay", -1e-4), ("dampening", float("nan"))])
def test_base_optimizer_settings_must_be_finite_and_in_range(name: str, key: str, bad: float) -> None:
    kwargs = {"lr": 0.1, key: bad}
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number.*got {bad!r}"):
        create_optimizer(name, make_params(), **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(betas=(0.9, float("nan"))), r"betas\[1\] must be a finite number >= 0 and < 1, got nan"),
    (dict(betas=(1.0, 0.999)), r"betas\[0\] must be .* < 1, got 1.0"),
    (dict(eps=float("inf")), "eps must be a finite number >= 0, got inf"),
    (dict(eps=-1e-8), "eps must be"),
])
def test_adam_settings_are_checked(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        SAM(make_params(), torch.optim.Adam, lr=1e-3, **kwargs)


def test_param_group_settings_are_checked_too() -> None:
    first, rest = make_params()
    with pytest.raises(ValueError, match=r"lr \(param group 1\) must be a finite number >= 0, got nan"):
        ERM([{"params": [first]}, {"params": [rest], "lr": float("nan")}], torch.optim.SGD, lr=0.1)
    opt = TSAM([first], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"momentum \(param group 1\)"):
        opt.add_param_group({"params": [rest], "momentum": float("-inf")})
    tensor_lr = ERM([first], torch.optim.SGD, lr=torch.tensor(0.1))  # torch accepts tensor learning rates
    assert float(tensor_lr.param_groups[0]["lr"]) == pytest.approx(0.1)


def test_check_hyperparameter_bounds() -> None:
    assert check_hyperparameter("x", 3) == 3.0 and isinstance(check_hyperparameter("x", 3), float)
    assert check_hyperparameter("x", 0.0, low=0.0) == 0.0
    assert check_hyperparameter("x", 1.0, high=1.0) == 1.0
    assert check_hyperparameter("x", float("inf"), low=0.0, allow_inf=True) == float("inf")
    assert check_hyperparameter("x", torch.tensor(0.5)) == 0.5
    for value, bounds, message in [
        (0.0, dict(low=0.0, low_inclusive=False), "x must be a finite number > 0, got 0.0"),
        (1.0, dict(high=1.0, high_inclusive=False), "x must be a finite number < 1, got 1.0"),
        (1.5, dict(low=0.0, high=1.0), "x must be a finite number >= 0 and <= 1, got 1.5"),
        (-1.0, dict(low=0.0, allow_inf=True), r"x must be a number \(inf allowed\) >= 0, got -1.0"),
        (float("nan"), dict(allow_inf=True), r"x must be a number \(inf allowed\), got nan"),
        (float("-inf"), {}, "x must be a finite number, got -inf"),
    ]:
        with pytest.raises(ValueError, match="^" + message + "$"):
            check_hyperparameter("x", value, **bounds)
    for value in (True, "1", None, [1.0], torch.tensor([1.0, 2.0])):
        with pytest.raises(TypeError, match="x must be a real number"):
            check_hyperparameter("x", value)


def test_check_param_group_skips_non_numbers_and_checks_sequences() -> None:
    check_param_group({"params": [1, 2], "nesterov": True, "foreach": None, "name": "head", "lr": 0.1})
    check_param_group({"betas": [], "custom": (1.0, 2.0)})
    with pytest.raises(ValueError, match=r"custom\[1\] must be a finite number, got inf"):
        check_param_group({"custom": (1.0, float("inf"))})
    with pytest.raises(ValueError, match=r"^unknown_setting! must be a finite number, got nan$"):
        check_param_group({"unknown_setting": float("nan")}, "!")
    assert BASE_SETTING_RANGES["lr"] == {"low": 0.0}


# ----------------------------------------------------------------------------- documented defaults, names, labels
def test_documented_defaults_of_every_optimizer_class() -> None:
    params = make_params()
    assert ERM(params, lr=0.1).hyperparameters == {}
    assert SAM(params, lr=0.1).hyperparameters == {"rho": 0.05, "adaptive": False, "adaptive_eta": 0.01}
    assert PGN(params, lr=0.1).hyperparameters == {"rho": 0.1, "alpha": 0.8, "normalize_clean": False}
    assert RSAM(params, lr=0.1).hyperparameters == {"rho": 0.05, "noise_scale": 1e-3, "grad_weight": 2.0}
    assert ESAM2(params, lr=0.1).hyperparameters == {"rho": 0.05, "multipliers": [0.5, 1.0, 1.5, 2.0, 2.5]}
    tsam = TSAM(params, lr=0.1)
    documented = {"tilt": 20.0, "num_samples": 3, "rho": 0.05, "sample_tilt": None, "nonfinite": "raise"}
    assert {k: tsam.hyperparameters[k] for k in documented} == documented
    assert tsam.hyperparameters["sampler"] == {"name": "ascent", "noise": "gaussian", "noise_radius": 1.0,
                                               "noise_std": 1.0, "direction": "per_sample", "ascent_fraction": 1.0,
                                               "refresh_every": 1}
    assert tsam.sample_tilt == 10.0 and tsam.aggregation_tilt == 10.0
    for opt in (ERM(params, lr=0.1), SAM(params, lr=0.1), TSAM(params, lr=0.1)):
        assert type(opt.base_optimizer) is torch.optim.SGD  # the default base optimizer
        assert opt.nonfinite == "raise"


@pytest.mark.parametrize("cls,kwargs,name", [
    (SAM, dict(rho=-1.0), "rho"), (SAM, dict(adaptive_eta=float("nan")), "adaptive_eta"),
    (PGN, dict(rho=float("inf")), "rho"), (PGN, dict(alpha=-0.1), "alpha"),
    (RSAM, dict(rho=-1.0), "rho"), (RSAM, dict(noise_scale=float("nan")), "noise_scale"),
    (RSAM, dict(grad_weight=-2.0), "grad_weight"), (ESAM2, dict(rho=float("nan")), "rho"),
    (ESAM2, dict(multipliers=[1.0, 0.0]), r"multipliers\[1\]"), (TSAM, dict(rho=-0.5), "rho"),
    (TSAM, dict(tilt=float("nan")), "tilt"), (TSAM, dict(noise_radius=float("inf")), "noise_radius"),
])
def test_bad_settings_are_rejected_by_exact_name(cls, kwargs, name) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        cls(make_params(), lr=0.1, **kwargs)


@pytest.mark.parametrize("cls", [SAM, PGN, ESAM2])
def test_non_bool_flags_are_rejected(cls) -> None:
    flag = {SAM: "adaptive", PGN: "normalize_clean", ESAM2: None}[cls]
    if flag is None:
        with pytest.raises(TypeError, match=r"multipliers\[0\] must be a real number, got True"):
            ESAM2(make_params(), lr=0.1, multipliers=[True])
        return
    with pytest.raises(ValueError, match=rf"^{flag} must be True or False, got 1"):
        cls(make_params(), lr=0.1, **{flag: 1})


@pytest.mark.parametrize("make,labels,ascent", [
    (lambda p: ERM(p, lr=0.1), ["clean"], set()),
    (lambda p: SAM(p, lr=0.1), ["clean", "perturbed"], {"clean"}),
    (lambda p: PGN(p, lr=0.1), ["clean", "perturbed"], set()),
    (lambda p: RSAM(p, lr=0.1), ["noise", "perturbed"], set()),
    (lambda p: ESAM2(p, lr=0.1, multipliers=[1.0, 2.0]), ["clean", "step_size_0", "step_size_1"], set()),
    (lambda p: TSAM(p, lr=0.1, num_samples=2), ["noise", "perturbed"] * 2, {"noise"}),
    (lambda p: TSAM(p, lr=0.1, num_samples=2, ascent_direction="shared"), ["clean", "perturbed", "perturbed"],
     {"clean"}),
    (lambda p: TSAM(p, lr=0.1, num_samples=2, sampler="naive"), ["naive"] * 2, set()),
])
def test_evaluation_labels_and_ascent_labels(make, labels, ascent) -> None:
    """The labels name the points (errors, logs); the ascent-only evaluations skip DDP's all-reduce under
    m-sharpness, and the optimizer says whether it makes any."""
    params = make_params()
    opt = make(params)
    seen, ascent_only = [], set()
    for evaluation in opt.manual_step():
        assert evaluation.index == len(seen)
        seen.append(evaluation.label)
        if evaluation.request.ascent_only:
            ascent_only.add(evaluation.label)
        value = torch_loss(params)
        value.backward()
        evaluation.record(value)
    assert seen == labels and opt.grad_evals_per_step == len(labels)
    assert ascent_only == ascent and opt.has_ascent_only_evaluations == bool(ascent)


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_statistics_move_once_per_step_with_model_and_every_time_without(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    x = torch.randn(16, 3)

    calls: list[int] = []

    def closure():
        calls.append(1)
        value = model(x).pow(2).mean()
        value.backward()
        return value

    with_model = create_optimizer(name, model.parameters(), lr=0.01, model=model, seed=SEED)
    for _ in range(2):
        with_model.step(closure)
    batchnorm = model[1]
    assert int(batchnorm.num_batches_tracked) == 2
    assert batchnorm.track_running_stats is True  # restored after each step
    without = create_optimizer(name, model.parameters(), lr=0.01, seed=SEED)
    calls.clear()
    without.step(closure)
    assert len(calls) >= 1 and int(batchnorm.num_batches_tracked) == 2 + len(calls)


def test_second_step_needs_a_first_step() -> None:
    opt = SAM(make_params(), lr=0.1)
    with pytest.raises(RuntimeError, match=r"second_step\(\) called without a preceding first_step\(\)"):
        opt.second_step()


def test_esam2_and_single_point_diagnostics() -> None:
    params = make_params()
    opt = ESAM2(params, lr=0.1, rho=0.1, multipliers=[1.0, 3.0, 2.0])
    out = opt.step(make_closure(params))
    g = grad(W0)
    losses = [loss(ascend(W0, g, 0.1 * m)) for m in (1.0, 3.0, 2.0)]
    best = max(range(3), key=lambda k: losses[k])
    step = opt.last_step
    close(step.losses, losses)
    assert step.weights == [1.0 if k == best else 0.0 for k in range(3)] and step.effective_sample_size == 1.0
    assert step.extra["chosen_index"] == best and step.extra["chosen_step_size"] == pytest.approx(0.1 * [1, 3, 2][best])
    close(step.extra["clean_loss"], loss(W0))
    close(step.objective, losses[best])
    close32(out, losses[best])
    params = make_params()
    rsam = RSAM(params, lr=0.1, noise_scale=0.0)  # no noise: SAM's point, diagnostics of one point
    rsam.step(make_closure(params))
    point_loss = loss(ascend(W0, g, 0.05))
    close(rsam.last_step.losses, [point_loss])
    assert rsam.last_step.weights == [1.0] and rsam.last_step.effective_sample_size == 1.0
    close(rsam.last_step.extra["noise_loss"], loss(W0))


def test_state_dict_after_loading_but_before_stepping_keeps_the_generator_state() -> None:
    def build(params):
        return TSAM(params, lr=0.05, num_samples=2, noise_radius=0.3, tilt=2.0, seed=SEED)

    params = make_params()
    first = build(params)
    first.step(make_closure(params))
    state = copy.deepcopy(first.state_dict())
    assert state["generator"]["device_type"] == "cpu"
    middle = build(make_params())
    middle.load_state_dict(state)
    relayed = middle.state_dict()  # nothing stepped: the pending generator state must be passed on
    assert torch.equal(relayed["generator"]["state"], state["generator"]["state"])
    start = flat(params)
    first.step(make_closure(params))
    last_params = make_params(start)
    last = build(last_params)
    last.load_state_dict(relayed)
    last.step(make_closure(last_params))
    assert flat(last_params) == flat(params)


def test_global_dot_is_the_flat_inner_product_in_float64() -> None:
    from tiltedsam.functional import global_dot
    a = [torch.tensor([1.0, 2.0]), None, torch.ones(3, dtype=torch.float32)]
    b = [torch.tensor([4.0, -1.0]), torch.tensor([5.0]), torch.tensor([1e8, 1.0, 1.0], dtype=torch.float32)]
    # 1e8 + 1 + 1 is 1e8 in float32 (spacing 8 there); accumulated in float64 it is exact
    assert global_dot(a, b) == 2.0 + 100000002.0
    assert global_dot([None], [torch.ones(2)]) == 0.0


def test_rsam_without_noise_draws_nothing_from_its_generator() -> None:
    params = make_params()
    opt = RSAM(params, lr=0.1, noise_scale=0.0, seed=SEED)
    opt.step(make_closure(params))
    assert opt.state_dict()["generator"] is None  # no noise, no draws: the noise stream stays at its start


def test_nonfinite_error_message_in_full() -> None:
    params = make_params()
    opt = ERM(params, lr=0.1)
    with pytest.raises(NonFiniteLossError) as info:
        opt.step(nan_at(params, 1))
    assert str(info.value) == (
        "ERM: the loss at evaluation 'clean' of step 0 is nan; no step was taken and the parameters keep their "
        "values from before this step (nonfinite='raise'). The run diverged or the batch is bad: lower the "
        "learning rate, check the data, or clip gradients")
    tsam = TSAM(params, lr=0.1, num_samples=2, noise_radius=0.0)
    with pytest.raises(NonFiniteLossError, match=r"^TSAM: the loss at evaluation 'perturbed' of sample 1 of step 0 "):
        tsam.step(nan_at(params, 4))


def test_tilted_stats_in_float32_and_over_a_batch() -> None:
    # float32 input: computed in float64, returned in float32. Values near 1e4 with a spread of 0.2: a
    # float32 computation loses the variance's leading digits to cancellation, float64 does not.
    values = torch.tensor([1e4 + 0.1, 1e4 + 0.2, 1e4 + 0.3], dtype=torch.float32)
    exact = [float(v) for v in values]  # the float32 numbers themselves, as Python floats
    mean = sum(exact) / 3
    variance = sum((v - mean) ** 2 for v in exact) / 3
    stats = tilted_stats(values, 0.0)
    assert stats.mean.dtype == stats.variance.dtype == stats.effective_sample_size.dtype == torch.float32
    assert float(stats.mean) == pytest.approx(mean, rel=1e-7)
    assert float(stats.variance) == pytest.approx(variance, rel=1e-6)
    batch = tilted_stats(torch.tensor([[0.0, LN3], [2.0, 2.0]], dtype=torch.float64), 1.0)
    assert batch.mean.tolist() == pytest.approx([0.75 * LN3, 2.0], rel=1e-14)
    assert batch.variance.tolist() == pytest.approx([0.1875 * LN3**2, 0.0], rel=1e-14, abs=1e-15)
    assert batch.effective_sample_size.tolist() == pytest.approx([1.6, 2.0], rel=1e-14)
    assert effective_sample_size(torch.tensor([[1.0, 3.0], [1.0, 1.0]])).tolist() == pytest.approx([1.6, 2.0])


# ----------------------------------------------------------------------------- registry and t schedules
def test_registry_budget_arithmetic() -> None:
    from tiltedsam.optim.registry import REGISTRY, OptimizerSpec, budget_multiplier, equal_compute_steps, register
    assert TSAM.evaluations_for() == 6  # s = 3 samples of the ascent sampler, 2 evaluations each
    assert TSAM.evaluations_for(num_samples=2, ascent_direction="shared") == 3
    assert equal_compute_steps("esam1", 0) == 0
    assert equal_compute_steps("esam1", 10) == 30
    assert equal_compute_steps("esam2", 10, reference="tsam", settings={"multipliers": [1.0]}) == 30
    with pytest.raises(ValueError, match=r"^reference_steps must be an integer >= 0, got -1$"):
        equal_compute_steps("esam1", -1)
    with pytest.raises(ValueError, match="reference_steps"):
        equal_compute_steps("esam1", 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"seconds_per_step must be two finite numbers > 0"):
        budget_multiplier("esam1", seconds_per_step=(1.0, 0.0))
    assert budget_multiplier("esam1", seconds_per_step=(2.0, 5.0)) == 2.5
    with pytest.raises(ValueError, match=r"^an optimizer named 'sam' is already registered$"):
        register(OptimizerSpec("sam", SAM, "again"))
    spec = OptimizerSpec("sam-test-entry", SAM, "a SAM registered by a test", {"rho": 0.2})
    try:
        assert register(spec) is spec and REGISTRY["sam-test-entry"] is spec
        assert create_optimizer("SAM-test-entry", make_params(), lr=0.1).rho == 0.2  # names are case-insensitive
    finally:
        REGISTRY.pop("sam-test-entry", None)
    entry = next(e for e in list_optimizers() if e["name"] == "pgn")
    assert entry["defaults"] == {"rho": 0.1, "alpha": 0.8, "normalize_clean": False} and entry["settings"] == {}
    assert entry["grad_evals_per_step"] == 2
    assert entry["budget_reference"] is None


def test_tilt_schedule_checks_against_the_optimizers_sample_tilt() -> None:
    from tiltedsam.optim import TiltScheduler
    from tiltedsam.optim.schedules import scheduled_tilt
    explicit = TSAM(make_params(), lr=0.1, tilt=4.0, sample_tilt=0.5)
    with pytest.raises(ValueError, match=r"sample_tilt=0.5 exceeds the schedule's lowest tilt 0.0 \(kind='increase'\)"):
        TiltScheduler(explicit, "increase", total_steps=5)
    TiltScheduler(explicit, "constant", total_steps=5)  # lowest = 4 >= 0.5
    follows = TSAM(make_params(), lr=0.1, tilt=4.0)
    schedule = TiltScheduler(follows, "decrease", total_steps=3)
    assert (follows.tilt, follows.sample_tilt) == (4.0, 2.0)
    schedule.step()
    assert (follows.tilt, follows.sample_tilt) == (2.0, 1.0)
    TiltScheduler(TSAM(make_params(), lr=0.1, tilt=math.inf), "constant")
    with pytest.raises(ValueError, match=r"^tilt=inf works only with kind='constant', got kind='increase'$"):
        TiltScheduler(TSAM(make_params(), lr=0.1, tilt=math.inf), "increase", total_steps=2)
    with pytest.raises(ValueError, match=r"^optimizer must have a 'tilt' \(e.g. TSAM\), got SAM$"):
        TiltScheduler(SAM(make_params(), lr=0.1))
    with pytest.raises(ValueError, match=r"^total_steps must be an integer >= 1, got True$"):
        TiltScheduler(follows, "increase", total_steps=True)
    with pytest.raises(ValueError, match=r"^tilt must be >= 0"):
        TiltScheduler(follows, "increase", total_steps=2, tilt=-1.0)
    with pytest.raises(ValueError, match=r"^kind must be one of \('constant', 'increase', 'decrease'\), got 'up'$"):
        scheduled_tilt("up", 0, 2, 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_a_parameter_without_gradient_is_not_moved_and_the_others_follow_the_rule(name: str) -> None:
    params = make_params()
    unused = nn.Parameter(torch.tensor([7.0, -3.0], dtype=torch.float64))
    with_unused = create_optimizer(name, [*params, unused], lr=0.1, seed=SEED)
    with_unused.step(make_closure(params))
    assert unused.detach().tolist() == [7.0, -3.0] and unused.grad is None
    if type(with_unused).__name__ in ("TSAM", "RSAM"):
        return  # their noise covers the unused parameter too, so the draws for the others differ
    alone = make_params()
    create_optimizer(name, alone, lr=0.1, seed=SEED).step(make_closure(alone))
    close(flat(params), flat(alone), rel=1e-14)


def test_pgn_when_a_parameter_has_a_gradient_at_only_one_of_the_two_points() -> None:
    lr, r, alpha = 0.1, 0.2, 0.7
    params = make_params()
    clean_only = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    perturbed_only = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    calls: list[int] = []

    def closure():
        calls.append(1)
        extra = clean_only.pow(2).sum() if len(calls) == 1 else perturbed_only.pow(2).sum()
        value = torch_loss(params) + extra
        value.backward()
        return value

    opt = PGN([*params, clean_only, perturbed_only], lr=lr, rho=r, alpha=alpha)
    opt.step(closure)
    # ||g1|| includes d/dc c^2 = 2c = 2 of clean_only; the ascent does not move perturbed_only (no g1)
    g1 = grad(W0) + [2.0]
    moved = ascend(W0 + [1.0], g1, r)
    g2 = grad(moved[:3])
    close(flat(params), sgd(W0, [(1 - alpha) * a + alpha * b for a, b in zip(grad(W0), g2)], lr))
    close(clean_only.item(), 1.0 - lr * (1 - alpha) * 2.0)  # only the clean term: (1 - alpha) g1
    close(perturbed_only.item(), 2.0 - lr * alpha * 4.0)  # only the perturbed term: alpha g2, g2 = 2 * 2


def test_esam2_ties_keep_the_first_step_size_and_sam_reports_its_point() -> None:
    weight = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = ESAM2([weight], lr=0.1, multipliers=[1.0, 2.0, 3.0])

    def flat_loss():
        value = (weight * 0.0).sum() + 5.0  # zero gradient: every step size lands on theta, equal losses
        value.backward()
        return value

    opt.step(flat_loss)
    assert opt.last_step.extra["chosen_index"] == 0 and opt.last_step.losses == [5.0, 5.0, 5.0]
    params = make_params()
    sam = SAM(params, lr=0.1, rho=0.05)
    sam.step(make_closure(params))
    point = loss(ascend(W0, grad(W0), 0.05))
    close(sam.last_step.losses, [point])
    assert sam.last_step.weights == [1.0] and sam.last_step.effective_sample_size == 1.0


def test_tsam_nonfinite_noise_loss_is_named_under_raise_and_dropped_under_ignore() -> None:
    params = make_params()
    opt = TSAM(params, lr=0.1, num_samples=2, noise_radius=0.1, seed=SEED)
    with pytest.raises(NonFiniteLossError, match=r"^TSAM: the loss at evaluation '(noise|perturbed)' of sample 0 of step 0 "):
        opt.step(nan_at(params, 1))
    assert flat(params) == W0
    ignoring = TSAM(params, lr=0.1, num_samples=2, noise_radius=0.1, seed=SEED, nonfinite="ignore")
    ignoring.step(nan_at(params, 3))  # the noise point of sample 1: that sample is dropped
    assert ignoring.last_step.weights[0] == 1.0 and ignoring.last_step.weights[1] == 0.0
    assert math.isnan(ignoring.last_step.extra["noise_loss"][1])
    assert all(math.isfinite(x) for x in flat(params))


def test_tilt_schedule_defaults_and_duck_typed_optimizers() -> None:
    from types import SimpleNamespace

    from tiltedsam.optim import TiltScheduler
    optimizer = SimpleNamespace(tilt=3.0)  # anything with a settable tilt, no hyperparameters
    schedule = TiltScheduler(optimizer)
    assert (schedule.kind, schedule.total_steps, schedule.target_tilt) == ("constant", 1, 3.0)
    schedule.step()
    assert optimizer.tilt == 3.0
    TiltScheduler(optimizer, "increase", total_steps=3)
    assert optimizer.tilt == 0.0


def test_tsam_sampler_by_name_with_options_and_the_naive_samplers_delta() -> None:
    from tiltedsam.optim.samplers import AscentSampler
    opt = TSAM(make_params(), lr=0.1, sampler="naive", sampler_options={"radius": 0.3, "noise": "gaussian"})
    assert opt.hyperparameters["sampler"] == {"name": "naive", "noise": "gaussian", "noise_std": 1.0, "radius": 0.3}
    assert opt.sample_tilt == 0.0 and opt.aggregation_tilt == opt.tilt  # samples from mu: all the tilt in the weights
    TSAM(make_params(), lr=0.1, sampler="naive", sample_tilt=0.0)  # 0 is what naive sampling means
    with pytest.raises(ValueError, match=r"^sample_tilt=1.0 given, but the 'naive' sampler draws eps from mu, not from "
                                         r"exp\(delta L\): its samples are weighted by exp\(t L\) \(delta = 0, Eq. 75\); "
                                         r"leave sample_tilt unset or 0$"):
        TSAM(make_params(), lr=0.1, sampler="naive", sample_tilt=1.0)
    instance = AscentSampler(noise="uniform", noise_radius=0.2)
    assert TSAM(make_params(), lr=0.1, sampler=instance).sampler is instance
    edge = TSAM(make_params(), lr=0.1, tilt=2.0, sample_tilt=2.0)  # delta = t is allowed (0 <= delta <= t)
    assert edge.aggregation_tilt == 0.0
    with pytest.raises(ValueError, match=r"^sample_tilt must be >= 0"):
        TSAM(make_params(), lr=0.1, sample_tilt=-1.0)
    with pytest.raises(ValueError, match=r"^sample_tilt must satisfy 0 <= sample_tilt <= tilt=2.0, got 3.0$"):
        TSAM(make_params(), lr=0.1, tilt=2.0, sample_tilt=3.0)


def test_step_needs_a_callable_closure() -> None:
    opt = SAM(make_params(), lr=0.1)
    message = (r"^SAM.step needs a closure that computes the loss, calls backward\(\) and returns the loss \(it is "
               r"evaluated at several perturbed points\); for loops that run their own forward/backward use "
               r"SAM.manual_step\(\) instead$")
    with pytest.raises(ValueError, match=message):
        opt.step()
    with pytest.raises(ValueError, match=message):
        opt.step(5)  # type: ignore[arg-type]


def test_registry_resolves_base_optimizers_and_names() -> None:
    assert type(create_optimizer("sam", make_params(), lr=0.1).base_optimizer) is torch.optim.SGD
    assert type(create_optimizer("Sam", make_params(), base_optimizer="ADAM", lr=0.1).base_optimizer) is torch.optim.Adam
    opt = create_optimizer("sgd", make_params(), base_optimizer=torch.optim.RMSprop, lr=0.1)
    assert type(opt.base_optimizer) is torch.optim.RMSprop
    with pytest.raises(ValueError, match=r"^unknown base optimizer 'rmsprop'; known.*\['adam', 'adamw', 'sgd'\]"):
        create_optimizer("sam", make_params(), base_optimizer="rmsprop", lr=0.1)
    for bad in (5, int):
        with pytest.raises(TypeError, match=r"^base optimizer must be a name \['adam', 'adamw', 'sgd'\] or a "
                                            rf"torch.optim.Optimizer class .*got {bad!r}$"):
            create_optimizer("sam", make_params(), base_optimizer=bad, lr=0.1)
    with pytest.raises(ValueError, match=r"^unknown optimizer 5; known optimizers: "):
        create_optimizer(5, make_params(), lr=0.1)  # type: ignore[arg-type]


def test_shell_construction_checks_in_full() -> None:
    from tiltedsam.optim.distributed import DistributedSync
    params = make_params()
    with pytest.raises(TypeError, match=r"Optimizer class .*got 5$"):
        SAM(params, 5, lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^base_optimizer must be an optimizer \*class\* \(e.g. torch.optim.SGD\) plus its "
                                        r"keyword arguments, not an instance: got SGD instance$"):
        SAM(params, torch.optim.SGD(params, lr=0.1))  # type: ignore[arg-type]
    factory = SAM(params, lambda groups, **kw: torch.optim.SGD(groups, **kw), lr=0.1)  # a factory is fine
    assert type(factory.base_optimizer) is torch.optim.SGD
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module or None, got str$"):
        SAM(params, lr=0.1, model="net")  # type: ignore[arg-type]
    for seed in (1.5, True, -1):
        with pytest.raises(ValueError, match=rf"^seed must be a non-negative int or None, got {seed!r}$"):
            SAM(params, lr=0.1, seed=seed)  # type: ignore[arg-type]
    torch.manual_seed(0)
    assert 10**6 < SAM(params, lr=0.1).seed < 2**62  # drawn from torch's RNG over [0, 2^62)
    with pytest.raises(ValueError, match=r"^nonfinite must be one of \['raise'\] for SAM, got 'ignore': SAM updates from "
                                         r"points it cannot drop, so there is nothing to ignore$"):
        SAM(params, lr=0.1, nonfinite="ignore")
    with pytest.raises(ValueError, match=r"^nonfinite must be one of \['raise', 'ignore'\] for ESAM2, got 'skip'$"):
        ESAM2(params, lr=0.1, nonfinite="skip")
    with pytest.raises(ValueError, match=r"local_ascent=True\) needs model=.* got model=NoneType for SAM$"):
        SAM(params, lr=0.1, distributed=DistributedSync(local_ascent=True))
    with pytest.raises(ValueError, match=r"local_ascent=True\) needs .* for ERM, which has none$"):
        ERM(params, lr=0.1, model=nn.Linear(1, 1), distributed=DistributedSync(local_ascent=True))
    fresh = SAM(params, lr=0.1)
    assert math.isnan(fresh.last_step.objective) and fresh.last_step.losses == []
    assert fresh.defaults["lr"] == 0.1 and fresh.defaults["rho"] == 0.05 and fresh.defaults["momentum"] == 0


def test_parameters_are_not_hyperparameters_and_groups_are_checked_where_added() -> None:
    odd = nn.Parameter(torch.tensor([float("nan")]))  # a parameter may hold anything; only settings are checked
    ERM([odd], lr=0.1)
    check_param_group({"names": ("a", "b"), "params": [torch.tensor([-1.0])]})
    with pytest.raises(ValueError, match=r"^x must be a finite number >= 0, got -1$"):
        check_param_group({"x": -1}, ranges={"x": {"low": 0.0}})
    first, rest = make_params()
    third = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = SAM([first], lr=0.1)
    opt.add_param_group({"params": [rest]})
    with pytest.raises(ValueError, match=r"lr \(param group 2\)"):
        opt.add_param_group({"params": [third], "lr": float("nan")})


def test_deepcopy_of_an_optimizer_steps_like_the_original() -> None:
    params = make_params()
    opt = TSAM(params, lr=0.1, num_samples=2, noise_radius=0.2, seed=SEED)
    opt.step(make_closure(params))
    twin = copy.deepcopy({"params": params, "opt": opt})
    opt.step(make_closure(params))
    twin["opt"].step(make_closure(twin["params"]))
    assert flat(twin["params"]) == flat(params)


def test_sampler_instance_with_options_and_a_missing_record_are_refused_in_full() -> None:
    from tiltedsam.optim.samplers import AscentSampler
    with pytest.raises(ValueError, match=r"^sampler settings \['noise'\] given together with a sampler instance$"):
        TSAM(make_params(), lr=0.1, sampler=AscentSampler(), sampler_options={"noise": "uniform"})
    params = make_params()
    opt = SAM(params, lr=0.1)
    with pytest.raises(RuntimeError, match=r"^evaluation 0 \('clean'\) ended without evaluation.record\(loss\): the "
                                           r"optimizer needs the loss value at every point$"):
        for _ in opt.manual_step():
            torch_loss(params).backward()
    assert flat(params) == W0 and opt.step_count == 0


def test_logged_only_losses_are_checked_in_a_single_process() -> None:
    """The shell's check of a loss that is only logged (SAM's clean loss, the ascent sampler's noise loss)."""
    opt = SAM(make_params(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match="is nan"):
        opt._local_loss_value(torch.tensor(float("nan")))
    assert math.isnan(opt._local_loss_value(float("nan"), check=False))
    assert opt._local_loss_value(torch.tensor(2.5)) == 2.5
    with pytest.raises(NonFiniteLossError, match="is inf"):
        opt._loss_value(float("inf"))
    assert opt._loss_value(float("inf"), check=False) == float("inf")
