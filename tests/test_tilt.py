"""The math core: paper identities (Eq. 3-4, Def. 1-2, App. B.3, Eq. 59) and numerical stability."""

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiltedsam.tilt import (
    NonFiniteLossError,
    TiltedGradientAccumulator,
    effective_sample_size,
    tilted_mean,
    tilted_stats,
    tilted_weights,
)

loss_vectors = st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=12)
tilts = st.floats(0, 1e3, allow_nan=False)


def direct_tilted_mean(values, tilt):
    """Textbook formula in float64, only valid where exp does not overflow."""
    x = torch.tensor(values, dtype=torch.float64)
    return float(torch.log(torch.exp(tilt * x).mean()) / tilt)


def test_zero_tilt_is_the_mean_and_inf_is_the_max():
    losses = torch.tensor([0.3, 1.7, -2.0, 5.5], dtype=torch.float64)
    assert float(tilted_mean(losses, 0.0)) == pytest.approx(float(losses.mean()), abs=1e-15)
    assert float(tilted_mean(losses, math.inf)) == 5.5
    assert torch.allclose(tilted_weights(losses, 0.0), torch.full((4,), 0.25, dtype=torch.float64))
    assert tilted_weights(losses, math.inf).tolist() == [0.0, 0.0, 0.0, 1.0]


def test_matches_the_direct_formula_where_that_is_safe():
    values = [0.1, 0.7, 1.3, 2.0]
    for tilt in (0.01, 0.5, 3.0, 20.0):
        assert float(tilted_mean(values, tilt)) == pytest.approx(direct_tilted_mean(values, tilt), rel=1e-12)
        w = torch.exp(tilt * torch.tensor(values, dtype=torch.float64))
        assert torch.allclose(tilted_weights(values, tilt), w / w.sum(), rtol=1e-12)


@settings(max_examples=200, deadline=None)
@given(loss_vectors, tilts, tilts)
def test_tilted_mean_is_non_decreasing_in_tilt(values, t1, t2):
    """App. B.3: L^t is monotone in t, between the mean (t=0) and the max (t=inf)."""
    low, high = sorted((t1, t2))
    a, b = float(tilted_mean(values, low)), float(tilted_mean(values, high))
    assert a <= b + 1e-9 * (1 + abs(b))
    mean, top = sum(values) / len(values), max(values)
    assert mean - 1e-9 * (1 + abs(mean)) <= a and b <= top + 1e-9 * (1 + abs(top))


def test_large_tilt_approaches_the_max_at_rate_log_n_over_t():
    values = [0.0, 1.0, 1.0, 3.0, 2.5]
    for tilt in (10.0, 100.0, 1e4):
        gap = 3.0 - float(tilted_mean(values, tilt))
        assert 0 <= gap <= math.log(len(values)) / tilt + 1e-12


def test_small_tilt_expansion_mean_plus_half_t_variance():
    """Eq. 59: L^t = E[L] + (t/2) var(L) + O(t^2); the remainder must shrink like t^2."""
    values = torch.tensor([0.2, 0.9, 1.4, 3.1, 2.2], dtype=torch.float64)
    mean, var = float(values.mean()), float(values.var(unbiased=False))
    remainders = []
    for tilt in (1e-2, 1e-3, 1e-4):
        remainders.append(abs(float(tilted_mean(values, tilt)) - (mean + tilt / 2 * var)))
    assert remainders[1] / remainders[0] == pytest.approx(1e-2, rel=0.05)
    assert remainders[2] / remainders[1] == pytest.approx(1e-2, rel=0.05)


def test_tiny_tilt_keeps_full_precision():
    values = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    mean, var = float(values.mean()), float(values.var(unbiased=False))
    assert float(tilted_mean(values, 1e-12)) == pytest.approx(mean + 0.5e-12 * var, abs=1e-15)
    # subnormal tilts: t * (L - max) has no digits left, the expansion must take over
    assert float(tilted_mean([0.0, 3.0], 5e-324)) == 1.5
    assert float(tilted_mean([0.0, 3.0], 1e-310)) == pytest.approx(1.5, abs=1e-15)


def test_no_overflow_for_extreme_tilts_and_losses():
    losses = torch.tensor([1e4, 9999.5, -1e4, 0.0], dtype=torch.float64)
    for tilt in (1e-8, 1.0, 1e3, 1e6, math.inf):
        value = tilted_mean(losses, tilt)
        w = tilted_weights(losses, tilt)
        assert torch.isfinite(value) and torch.isfinite(w).all()
        assert float(w.sum()) == pytest.approx(1.0)
        stats = tilted_stats(losses, tilt)
        assert all(torch.isfinite(s) for s in stats)
    # float32 input: no overflow either, result keeps the dtype
    value32 = tilted_mean(losses.float(), 1e6)
    assert value32.dtype == torch.float32 and float(value32) == pytest.approx(1e4 - math.log(4) / 1e6, abs=1e-3)


def test_nonfinite_losses_raise_by_default_and_can_be_ignored():
    with pytest.raises(NonFiniteLossError, match="positions \\[1\\]"):
        tilted_mean([1.0, float("nan"), 2.0], 1.0)
    with pytest.raises(NonFiniteLossError):
        tilted_weights([1.0, float("inf")], 0.0)
    kept = tilted_mean([1.0, float("nan"), 3.0], 1.0, nonfinite="ignore")
    assert float(kept) == pytest.approx(direct_tilted_mean([1.0, 3.0], 1.0))
    w = tilted_weights([1.0, float("nan"), 3.0], 2.0, nonfinite="ignore")
    assert w[1] == 0 and float(w.sum()) == pytest.approx(1.0)
    with pytest.raises(NonFiniteLossError, match="every loss"):
        tilted_mean([float("nan")], 1.0, nonfinite="ignore")


@pytest.mark.parametrize("bad", [-1.0, float("nan"), -math.inf])
def test_bad_tilt_is_rejected_with_its_value(bad):
    with pytest.raises(ValueError, match="tilt must be >= 0"):
        tilted_mean([1.0, 2.0], bad)


def test_tilted_stats_definition_2():
    values = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    stats0 = tilted_stats(values, 0.0)
    assert float(stats0.mean) == pytest.approx(float(values.mean()))
    assert float(stats0.variance) == pytest.approx(float(values.var(unbiased=False)))
    assert float(stats0.effective_sample_size) == pytest.approx(4.0)
    tilt = 0.7
    e = torch.exp(tilt * values)
    mean = float((e * values).sum() / e.sum())
    second = float((e * values**2).sum() / e.sum())
    stats = tilted_stats(values, tilt)
    assert float(stats.mean) == pytest.approx(mean, rel=1e-12)
    assert float(stats.variance) == pytest.approx(second - mean**2, rel=1e-10)
    # inf: all weight on the max, zero variance
    assert float(tilted_stats(values, math.inf).variance) == 0.0


def test_effective_sample_size_bounds_and_errors():
    assert float(effective_sample_size([1, 1, 1, 1])) == pytest.approx(4.0)
    assert float(effective_sample_size([0, 5, 0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-negative"):
        effective_sample_size([1.0, -0.5])
    with pytest.raises(ValueError, match="sum to zero"):
        effective_sample_size([0.0, 0.0])


def test_lemma_1_autograd_of_mc_objective_equals_weighted_gradient():
    """grad of (1/t) log mean_j exp(t L(theta + eps_j)) = sum_j softmax(t L)_j grad L(theta + eps_j)."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    a = torch.randn(5, 5, dtype=torch.float64)
    eps = 0.3 * torch.randn(7, 5, dtype=torch.float64)

    def loss(p):
        return torch.tanh(a @ p).pow(2).sum() + p.pow(4).sum() * 0.1

    for tilt in (0.0, 0.5, 4.0, math.inf):
        losses = torch.stack([loss(theta + e) for e in eps])
        (auto_grad,) = torch.autograd.grad(tilted_mean(losses, tilt), theta)
        grads = torch.stack([torch.autograd.grad(loss(theta + e), theta)[0] for e in eps])
        weights = tilted_weights(losses.detach(), tilt)
        assert torch.allclose(auto_grad, (weights[:, None] * grads).sum(0), rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=8),
    st.sampled_from([0.0, 0.3, 2.0, 50.0, 1e6, math.inf]),
    st.randoms(use_true_random=False),
)
def test_streaming_accumulator_equals_batch_formula_for_any_order(losses, tilt, rng):
    gen = torch.Generator().manual_seed(len(losses))
    grads = [[torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(2, 2, generator=gen, dtype=torch.float64)]
             for _ in losses]
    weights = tilted_weights(losses, tilt)
    expected = [sum(w * g[k] for w, g in zip(weights, grads)) for k in range(2)]
    order = list(range(len(losses)))
    rng.shuffle(order)
    acc = TiltedGradientAccumulator(tilt)
    for i in order:
        acc.add(losses[i], grads[i])
    result = acc.result()
    for got, want in zip(result, expected):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    assert torch.allclose(acc.weights(), tilted_weights([losses[i] for i in order], tilt))


def test_accumulator_single_sample_is_exact_and_none_slots_stay_none():
    g = torch.tensor([0.1, 0.2, 0.3])
    acc = TiltedGradientAccumulator(5.0)
    acc.add(1.23, [g, None])
    out = acc.result()
    assert torch.equal(out[0], g) and out[1] is None and out[0] is not g


def test_accumulator_nonfinite_policy():
    acc = TiltedGradientAccumulator(1.0)
    acc.add(1.0, [torch.ones(2)])
    with pytest.raises(NonFiniteLossError, match="sample 1"):
        acc.add(float("nan"), [torch.ones(2)])
    skip = TiltedGradientAccumulator(1.0, nonfinite="ignore")
    skip.add(float("inf"), [torch.full((2,), float("nan"))])
    skip.add(2.0, [torch.ones(2)])
    assert torch.equal(skip.result()[0], torch.ones(2)) and skip.num_used == 1
    empty = TiltedGradientAccumulator(1.0, nonfinite="ignore")
    empty.add(float("nan"), [torch.ones(2)])
    with pytest.raises(NonFiniteLossError, match="every loss"):
        empty.result()


def test_uniform_weights_for_zero_tilt_in_accumulator():
    acc = TiltedGradientAccumulator(0.0)
    rnd = random.Random(0)
    grads = [torch.tensor([rnd.random()]) for _ in range(5)]
    for i, g in enumerate(grads):
        acc.add(10.0 * i, [g])
    assert torch.allclose(acc.result()[0], torch.stack(grads).mean(0))
