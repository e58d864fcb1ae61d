"""The cheap ways to draw TSAM's ascent points (shared direction, sub-batch ascent, lazy ascent), each
pinned against a hand computation on a tiny least-squares model, plus their evaluation accounting."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tiltedsam import create_optimizer, grad_evals_per_step
from tiltedsam.optim.base import Evaluation, Point, Request
from tiltedsam.optim.tsam import TSAM
from tiltedsam.optim.samplers import AscentSampler


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


A = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.0, 1.0]], dtype=torch.float64)
B = _vec(1.0, -1.0, 2.0, 0.5)
W0 = [0.3, -0.7]
RHO, TILT, LR = 0.4, 2.0, 0.1  # sample_tilt = tilt / 2, so the weights are exp((t - t/2) L_j) = exp(L_j)
#: the noise delta_j the samplers add, step by step (step -> list over samples)
NOISE = [[_vec(0.1, -0.2), _vec(-0.3, 0.05), _vec(0.2, 0.2)],
         [_vec(0.0, 0.1), _vec(0.15, -0.1), _vec(-0.05, -0.25)],
         [_vec(-0.1, 0.3), _vec(0.05, 0.05), _vec(0.3, -0.1)]]


class _FixedNoise(AscentSampler):
    """The ascent sampler with known noise: NOISE[step][j] instead of a random draw."""

    def __init__(self, **settings):
        super().__init__(noise_radius=1.0, **settings)
        self.draws = 0

    def draw_noise(self, params, generator):
        step, j = divmod(self.draws, len(NOISE[0]))  # the tests draw s = 3 samples per step
        self.draws += 1
        return [NOISE[step][j].clone()]


# ------------------------------------------------------------------ the hand computation
def loss_and_grad(w: torch.Tensor, rows: int = 4) -> tuple[float, torch.Tensor]:
    """L(w) = mean_i (a_i . w - b_i)^2 / 2 over the first ``rows`` examples, and its gradient A^T r / n."""
    a, b = A[:rows], B[:rows]
    r = a @ w - b
    return float(0.5 * (r**2).mean()), a.T @ r / rows


def unit(g: torch.Tensor) -> torch.Tensor:
    return g / (g.norm() + 1e-12)


def tilted_update(w: torch.Tensor, eps: list[torch.Tensor]) -> torch.Tensor:
    """One TSAM step with plain SGD: w - lr sum_j w_j g(w + eps_j), w_j ~ exp((t - t/2) L(w + eps_j))."""
    losses, grads = zip(*(loss_and_grad(w + e) for e in eps))
    weights = torch.softmax(torch.tensor(losses, dtype=torch.float64) * (TILT - TILT / 2), dim=0)
    return w - LR * sum(wj * g for wj, g in zip(weights, grads))


# ------------------------------------------------------------------ driving the optimizer
def _run(steps: int, **settings):
    weight = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    optimizer = TSAM([weight], lr=LR, tilt=TILT, num_samples=3, rho=RHO, sampler=_FixedNoise(**settings), seed=0)
    rows_seen: list[list[int]] = []
    for _ in range(steps):
        rows_seen.append([])

        def closure(evaluation):
            a, b = evaluation.batch(A, B)
            rows_seen[-1].append(len(b))
            loss = 0.5 * ((a @ weight - b) ** 2).mean()
            loss.backward()
            return loss

        optimizer.step(closure)
    return weight.detach(), optimizer, rows_seen


def test_default_is_algorithm_2() -> None:
    w = torch.tensor(W0, dtype=torch.float64)
    eps = [d + RHO * unit(loss_and_grad(w + d)[1]) for d in NOISE[0]]
    got, optimizer, rows = _run(1)
    assert torch.allclose(got, tilted_update(w, eps), rtol=1e-12, atol=1e-14)
    assert rows == [[4] * 6] and optimizer.grad_evals_per_step == 6


def test_shared_direction_uses_one_gradient_at_theta_for_every_sample() -> None:
    w = torch.tensor(W0, dtype=torch.float64)
    clean_loss, g = loss_and_grad(w)
    eps = [d + RHO * unit(g) for d in NOISE[0]]
    got, optimizer, rows = _run(1, direction="shared")
    assert torch.allclose(got, tilted_update(w, eps), rtol=1e-12, atol=1e-14)
    assert rows == [[4] * 4] and optimizer.grad_evals_per_step == 4  # s + 1
    assert optimizer.last_step.extra["clean_loss"] == [pytest.approx(clean_loss, rel=1e-12)]  # for free


def test_sub_batch_ascent_takes_the_direction_from_the_first_rows_only() -> None:
    w = torch.tensor(W0, dtype=torch.float64)
    eps = [d + RHO * unit(loss_and_grad(w + d, rows=2)[1]) for d in NOISE[0]]
    got, optimizer, rows = _run(1, ascent_fraction=0.5)
    assert torch.allclose(got, tilted_update(w, eps), rtol=1e-12, atol=1e-14)
    assert rows == [[2, 4] * 3]  # the perturbed gradients, which enter the update, use the whole batch
    assert optimizer.grad_evals_per_step == 4.5  # s (1 + f)
    # and the direction really differs from the full-batch one here (so the test can tell them apart)
    assert not torch.allclose(unit(loss_and_grad(w, 2)[1]), unit(loss_and_grad(w)[1]), atol=1e-3)


def test_lazy_ascent_reuses_the_last_directions_with_fresh_noise() -> None:
    w0 = torch.tensor(W0, dtype=torch.float64)
    directions = [unit(loss_and_grad(w0 + d)[1]) for d in NOISE[0]]
    w1 = tilted_update(w0, [d + RHO * u for d, u in zip(NOISE[0], directions)])
    w2 = tilted_update(w1, [d + RHO * u for d, u in zip(NOISE[1], directions)])  # reused, not recomputed
    w3 = tilted_update(w2, [d + RHO * unit(loss_and_grad(w2 + d)[1]) for d in NOISE[2]])  # refreshed
    got, optimizer, rows = _run(3, refresh_every=2)
    assert torch.allclose(got, w3, rtol=1e-12, atol=1e-14)
    assert [len(r) for r in rows] == [6, 3, 6]
    assert optimizer.grad_evals_per_step == 4.5  # s (1 + 1/k)


def test_shared_lazy_reuses_one_direction() -> None:
    w0 = torch.tensor(W0, dtype=torch.float64)
    d0 = unit(loss_and_grad(w0)[1])
    w1 = tilted_update(w0, [d + RHO * d0 for d in NOISE[0]])
    w2 = tilted_update(w1, [d + RHO * d0 for d in NOISE[1]])
    d2 = unit(loss_and_grad(w2)[1])
    w3 = tilted_update(w2, [d + RHO * d2 for d in NOISE[2]])
    got, optimizer, rows = _run(3, direction="shared", refresh_every=2)
    assert torch.allclose(got, w3, rtol=1e-12, atol=1e-14)
    assert [len(r) for r in rows] == [4, 3, 4]
    assert optimizer.grad_evals_per_step == 3.5  # s + 1/k


def test_lazy_directions_round_trip_in_state_dict() -> None:
    _, optimizer, _ = _run(1, refresh_every=3)
    state = copy.deepcopy(optimizer.state_dict())
    assert state["extra"]["sampler"]["steps_since_refresh"] == 1
    assert len(state["extra"]["sampler"]["directions"]) == 3
    weight = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    fresh = TSAM([weight], lr=LR, tilt=TILT, num_samples=3, rho=RHO, refresh_every=3, seed=1)
    assert fresh.evaluations_next_step == 6  # nothing to reuse yet
    fresh.load_state_dict(state)
    assert fresh.evaluations_next_step == 3  # the loaded directions are reused next step
    for saved, loaded in zip(state["extra"]["sampler"]["directions"], fresh.sampler.directions):
        assert torch.equal(saved[0], loaded[0])


@pytest.mark.parametrize("settings, evals", [
    ({}, 6), ({"ascent_direction": "shared"}, 4), ({"ascent_fraction": 0.25}, 3.75),
    ({"refresh_every": 5}, 3.6), ({"ascent_direction": "shared", "refresh_every": 5}, 3.2),
    ({"ascent_direction": "shared", "ascent_fraction": 0.5}, 3.5),
    ({"ascent_fraction": 0.5, "refresh_every": 2}, 3.75), ({"num_samples": 5, "ascent_direction": "shared"}, 6),
])
def test_declared_cost_of_each_variant(settings: dict, evals: float) -> None:
    assert grad_evals_per_step("tsam", **settings) == evals
    weight = torch.nn.Parameter(torch.zeros(2))
    assert TSAM([weight], lr=0.1, **settings).grad_evals_per_step == evals


def test_registered_variants() -> None:
    assert grad_evals_per_step("tsam-shared") == 4
    assert grad_evals_per_step("tsam-subbatch") == 3.75
    assert grad_evals_per_step("tsam-lazy") == 3.6
    assert grad_evals_per_step("tsam-shared-lazy") == 3.2


@pytest.mark.parametrize("settings, match", [
    ({"ascent_direction": "both"}, "direction"), ({"ascent_fraction": 0.0}, "ascent_fraction"),
    ({"ascent_fraction": 1.5}, "ascent_fraction"), ({"ascent_fraction": float("nan")}, "ascent_fraction"),
    ({"refresh_every": 0}, "refresh_every"), ({"refresh_every": 2.5}, "refresh_every"),
    ({"sampler": "hmc", "refresh_every": 2}, "'ascent' sampler only"),
])
def test_bad_settings_raise_value_error_naming_them(settings: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TSAM([torch.nn.Parameter(torch.zeros(2))], lr=0.1, **settings)


def test_evaluation_batch_slices_the_leading_rows() -> None:
    x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    sub_x, sub_y = Evaluation(0, Request(Point.NOISE, 0.5)).batch(x, y)
    assert torch.equal(sub_x, x[:3]) and torch.equal(sub_y, y[:3])  # ceil(2.5) = 3
    assert Evaluation(0, Request(Point.NOISE, 0.01)).batch(y).shape == (1,)  # never empty
    assert Evaluation(0, Request(Point.PERTURBED)).batch(y) is y
    with pytest.raises(ValueError, match="different numbers"):
        Evaluation(0, Request(Point.NOISE, 0.5)).batch(x, y[:4])


def test_manual_step_hands_out_the_fraction() -> None:
    weight = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    optimizer = TSAM([weight], lr=LR, num_samples=2, ascent_fraction=0.5, seed=0)
    seen = []
    for evaluation in optimizer.manual_step():
        seen.append((evaluation.label, evaluation.batch_fraction))
        a, b = evaluation.batch(A, B)
        loss = 0.5 * ((a @ weight - b) ** 2).mean()
        loss.backward()
        evaluation.record(loss)
    assert seen == [("noise", 0.5), ("perturbed", 1.0)] * 2


def test_closure_without_argument_warns_that_sub_batch_saves_nothing() -> None:
    weight = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    optimizer = create_optimizer("tsam-subbatch", [weight], lr=LR, seed=0)

    def closure():
        loss = 0.5 * ((A @ weight - B) ** 2).mean()
        loss.backward()
        return loss

    with pytest.warns(UserWarning, match="whole batch"):
        optimizer.step(closure)
    assert math.isfinite(optimizer.last_step.objective)


# ------------------------------------------------------------------ the harness
def _harness_config(out, *extra):
    import json

    from tiltedsam.harness.config import load_config

    return load_config(None, ["data.name=digits", "data.limit=300", "model.name=mlp", "optimizer.lr=0.05",
                              "budget.kind=grad_evals", "budget.amount=100", "run.progress=false",
                              "run.num_threads=1", f"run.out_dir={json.dumps(str(out))}", *extra])


def test_harness_runs_sub_batch_ascent_on_a_fractional_budget(tmp_path) -> None:
    from tiltedsam.harness.train import train

    config = _harness_config(tmp_path / "run", "optimizer.name=tsam-subbatch",
                             "optimizer.settings={num_samples = 2, ascent_fraction = 0.5}")
    seen = []
    original = Evaluation.batch

    def spy(self, *tensors):  # record which fraction of the batch each evaluation used
        out = original(self, *tensors)
        seen.append((self.label, len(out[1]) / len(tensors[1])))
        return out

    Evaluation.batch = spy
    try:
        result = train(config)
    finally:
        Evaluation.batch = original
    assert result["grad_evals_per_step"] == 3  # s (1 + f) = 2 * 1.5
    assert result["steps"] == 33 and result["grad_evals"] == 99  # floor(100 / 3) steps
    first_batch = seen[:4]
    assert first_batch == [("noise", 0.5), ("perturbed", 1.0), ("noise", 0.5), ("perturbed", 1.0)]


def test_harness_resumes_lazy_ascent_mid_period(tmp_path) -> None:
    from tiltedsam.harness.train import RunInterrupted, train

    settings = "optimizer.settings={num_samples = 2, refresh_every = 3}"
    straight = train(_harness_config(tmp_path / "a", "optimizer.name=tsam", settings, "budget.amount=150"))
    with pytest.raises(RunInterrupted):
        train(_harness_config(tmp_path / "b", "optimizer.name=tsam", settings, "budget.amount=150"),
              stop_after_epochs=1)
    resumed = train(_harness_config(tmp_path / "b", "optimizer.name=tsam", settings, "budget.amount=150"), resume=True)
    assert straight["grad_evals_per_step"] == pytest.approx(2 + 2 / 3)  # s (1 + 1/k)
    for key in ("final_test_acc", "best_val_test_acc", "final_train_loss", "steps", "grad_evals"):
        assert resumed[key] == straight[key], key


def test_closure_with_optional_argument_keeps_its_default():
    """Only a required first parameter (or one named ``evaluation``) receives the Evaluation: the common
    ``closure(backward=True)`` idiom must still see ``True``, not an Evaluation object."""
    from tiltedsam.optim.base import closure_takes_evaluation

    seen = []

    def optional(backward=True):
        seen.append(backward)

    assert not closure_takes_evaluation(optional)
    assert closure_takes_evaluation(lambda evaluation: None)
    assert closure_takes_evaluation(lambda evaluation=None: None)
    assert not closure_takes_evaluation(lambda: None)
    assert not closure_takes_evaluation(lambda *, evaluation=None: None)

    model = torch.nn.Linear(2, 1)
    opt = TSAM(model.parameters(), lr=0.1, num_samples=2, noise_radius=0.0, tilt=0.0)
    x = torch.ones(4, 2)

    def closure(backward=True):
        seen.append(backward)
        loss = model(x).pow(2).mean()
        if backward:
            loss.backward()
        return loss

    opt.step(closure)
    assert seen == [True] * opt.grad_evals_per_step
