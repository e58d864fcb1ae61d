"""tiltedsam.tilt pinned at inputs whose answers are known in closed form (the paper's Def. 1-3, Eq. 3).

Every expected value is written from the definition with Python's ``math``/``decimal`` (never with a
function of the library), at inputs chosen so that the answer is a short formula: losses ``0`` and
``ln 3`` give tilted weights ``1/4, 3/4`` at ``t = 1``, and so on. Precision claims (tiny ``t``, huge
``t``) are checked against high-precision ``decimal`` arithmetic, so a less precise formula that agrees at
moderate ``t`` fails here.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import pytest
import torch

from tiltedsam.tilt import (
    NonFiniteLossError,
    TiltedGradientAccumulator,
    check_tilt,
    effective_sample_size,
    tilted_log_weights,
    tilted_mean,
    tilted_stats,
    tilted_weights,
)

LN3 = math.log(3.0)
NAN, INF = float("nan"), float("inf")


def exact_tilted_mean(losses: list[float], tilt: float) -> float:
    """(1/t) log((1/n) sum_j exp(t L_j)) in decimal arithmetic with 60 digits beyond t's exponent."""
    getcontext().prec = 60 + max(0, -math.floor(math.log10(tilt)))
    t = Decimal(tilt)
    mean = sum((t * Decimal(x)).exp() for x in losses) / len(losses)
    return float(mean.ln() / t)


def f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- tilted mean (Eq. 3)
def test_tilted_mean_closed_forms() -> None:
    # t = 1, L = (0, ln 3): log((1 + 3) / 2) = ln 2
    assert float(tilted_mean(f64([0.0, LN3]), 1.0)) == pytest.approx(math.log(2.0), rel=1e-15)
    # t = 2, L = (0, ln 3): (1/2) log((1 + 9) / 2) = ln(5) / 2
    assert float(tilted_mean(f64([0.0, LN3]), 2.0)) == pytest.approx(math.log(5.0) / 2, rel=1e-15)
    # t = 0: the arithmetic mean; t = inf: the max
    assert float(tilted_mean(f64([1.0, 2.0, 6.0]), 0.0)) == 3.0
    assert float(tilted_mean(f64([1.0, 7.0, 6.0]), INF)) == 7.0
    # a plain Python list and an integer tilt work alike
    assert float(tilted_mean([0.0, LN3], 1)) == pytest.approx(math.log(2.0), rel=1e-15)


def test_tilted_mean_is_shift_equivariant_and_bounded() -> None:
    values = f64([0.3, -1.2, 2.5, 0.0])
    for tilt in (0.1, 1.0, 10.0):
        base = float(tilted_mean(values, tilt))
        assert float(tilted_mean(values + 100.0, tilt)) == pytest.approx(base + 100.0, rel=1e-14)
        assert float(values.mean()) < base < float(values.max())


@pytest.mark.parametrize("tilt", [1e-300, 1e-20, 1e-12, 1e-9, 1e-6, 1e-3, 0.3, 3.0, 30.0])
def test_tilted_mean_full_precision_across_tilts(tilt: float) -> None:
    losses = [0.25, 1.0, 2.0, 3.5]
    expected = exact_tilted_mean(losses, tilt)
    assert float(tilted_mean(f64(losses), tilt)) == pytest.approx(expected, rel=4e-16, abs=0)


def test_tiny_tilt_is_mean_plus_half_t_variance() -> None:
    # L = (1, 3): mean 2, population variance 1; for t = 1e-10, 2 + t/2 exactly to double precision
    assert float(tilted_mean(f64([1.0, 3.0]), 1e-10)) == 2.0 + 0.5e-10


def test_huge_tilt_and_huge_losses_do_not_overflow() -> None:
    # t = 1e6, L = (1e4, 1e4 - 1): 1e4 + log((1 + e^-1e6) / 2) / 1e6 = 1e4 - ln 2 / 1e6
    value = float(tilted_mean(f64([1e4, 1e4 - 1.0]), 1e6))
    assert value == pytest.approx(1e4 - math.log(2.0) / 1e6, rel=1e-15)
    # t = 1e300 with moderate losses: the max minus (ln n) / t
    assert float(tilted_mean(f64([0.0, 1.0]), 1e300)) == 1.0


def test_tilted_mean_over_the_last_dimension_of_a_batch() -> None:
    batch = f64([[0.0, LN3], [1.0, 1.0]])
    out = tilted_mean(batch, 1.0)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([math.log(2.0), 1.0], rel=1e-15)


def test_tilted_mean_keeps_the_input_dtype() -> None:
    out = tilted_mean(torch.tensor([0.0, 1.0], dtype=torch.float32), 1.0)
    assert out.dtype == torch.float32
    assert tilted_mean(torch.tensor([1, 3]), 0.0).dtype == torch.float64  # integer losses become float64


# ----------------------------------------------------------------------------- weights (Def. 1) and ESS
def test_tilted_weights_closed_forms() -> None:
    assert tilted_weights(f64([0.0, LN3]), 1.0).tolist() == pytest.approx([0.25, 0.75], rel=1e-15)
    assert tilted_weights(f64([0.0, LN3]), 2.0).tolist() == pytest.approx([0.1, 0.9], rel=1e-14)
    assert tilted_weights(f64([5.0, -2.0, 1.0]), 0.0).tolist() == pytest.approx([1 / 3] * 3, rel=1e-15)
    # t = inf: uniform over the argmax set (ties share), zero elsewhere
    assert tilted_weights(f64([1.0, 2.0, 2.0]), INF).tolist() == [0.0, 0.5, 0.5]
    logw = tilted_log_weights(f64([1.0, 2.0, 2.0]), INF)
    assert logw[0].item() == -INF and logw[1].item() == pytest.approx(-math.log(2.0), rel=1e-15)
    assert tilted_log_weights(f64([0.0, LN3]), 1.0).tolist() == pytest.approx(
        [math.log(0.25), math.log(0.75)], rel=1e-14)
    assert tilted_log_weights(f64([4.0, 9.0, 1.0, 0.0]), 0.0).tolist() == [-math.log(4.0)] * 4


def test_effective_sample_size_closed_forms() -> None:
    # (sum w)^2 / sum w^2: (1/4, 3/4) -> 1 / (1/16 + 9/16) = 1.6; unnormalised (1, 3) -> 16 / 10
    assert float(effective_sample_size(f64([0.25, 0.75]))) == pytest.approx(1.6, rel=1e-15)
    assert float(effective_sample_size(f64([1.0, 3.0]))) == pytest.approx(1.6, rel=1e-15)
    assert float(effective_sample_size([2.0, 2.0, 2.0, 2.0])) == 4.0
    assert float(effective_sample_size(f64([0.0, 5.0, 0.0]))) == 1.0
    for bad in ([-0.1, 1.1], [NAN, 1.0], [INF, 1.0]):
        with pytest.raises(ValueError, match="finite and non-negative"):
            effective_sample_size(f64(bad))
    with pytest.raises(ValueError, match="sum to zero"):
        effective_sample_size(f64([0.0, 0.0]))


def test_tilted_stats_closed_forms() -> None:
    # X = (0, ln 3), t = 1: w = (1/4, 3/4); mean = 3/4 ln 3; variance = w0 w1 (ln 3)^2; ESS = 1.6
    stats = tilted_stats(f64([0.0, LN3]), 1.0)
    assert float(stats.mean) == pytest.approx(0.75 * LN3, rel=1e-15)
    assert float(stats.variance) == pytest.approx(0.1875 * LN3**2, rel=1e-14)
    assert float(stats.effective_sample_size) == pytest.approx(1.6, rel=1e-14)
    # t = 0: ordinary mean and population variance, ESS = n
    stats = tilted_stats(f64([1.0, 2.0, 6.0]), 0.0)
    assert (float(stats.mean), float(stats.variance), float(stats.effective_sample_size)) == pytest.approx(
        (3.0, 14.0 / 3.0, 3.0), rel=1e-15)
    # weights from one quantity, average of another: values (10, 20) weighted (1/4, 3/4)
    stats = tilted_stats(f64([10.0, 20.0]), 1.0, weights_from=f64([0.0, LN3]))
    assert float(stats.mean) == pytest.approx(17.5, rel=1e-15)
    assert float(stats.variance) == pytest.approx(0.1875 * 100.0, rel=1e-14)
    # t = inf: a point mass at the max, variance 0, ESS 1
    stats = tilted_stats(f64([1.0, 4.0, 2.0]), INF)
    assert (float(stats.mean), float(stats.variance), float(stats.effective_sample_size)) == (4.0, 0.0, 1.0)


# ----------------------------------------------------------------------------- the non-finite policy
@pytest.mark.parametrize("tilt", [0.0, 1.0, INF])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nonfinite_losses_raise_at_every_tilt(tilt: float, bad: float) -> None:
    for function in (tilted_mean, tilted_weights, tilted_log_weights):
        with pytest.raises(NonFiniteLossError, match=r"positions \[1\]"):
            function(f64([1.0, bad, 3.0]), tilt)
    with pytest.raises(NonFiniteLossError):
        tilted_stats(f64([1.0, bad, 3.0]), tilt)


def test_ignore_policy_drops_the_entries_at_zero_finite_and_infinite_tilt() -> None:
    losses = f64([1.0, NAN, 3.0, INF])
    assert float(tilted_mean(losses, 0.0, nonfinite="ignore")) == 2.0
    assert tilted_weights(losses, 0.0, nonfinite="ignore").tolist() == [0.5, 0.0, 0.5, 0.0]
    assert float(tilted_mean(losses, INF, nonfinite="ignore")) == 3.0  # +inf is dropped, not the max
    assert tilted_weights(losses, INF, nonfinite="ignore").tolist() == [0.0, 0.0, 1.0, 0.0]
    # t = 1 over (0, ln 3) with a NaN between: log((1 + 3) / 2)
    assert float(tilted_mean(f64([0.0, NAN, LN3]), 1.0, nonfinite="ignore")) == pytest.approx(
        math.log(2.0), rel=1e-15)
    assert tilted_weights(f64([0.0, NAN, LN3]), 1.0, nonfinite="ignore").tolist() == pytest.approx(
        [0.25, 0.0, 0.75], rel=1e-15)
    # tiny t with a dropped entry: the expansion over the finite entries only (mean 2, variance 1)
    assert float(tilted_mean(f64([1.0, NAN, 3.0]), 1e-10, nonfinite="ignore")) == 2.0 + 0.5e-10
    stats = tilted_stats(f64([1.0, NAN, 3.0]), 0.0, nonfinite="ignore")
    assert (float(stats.mean), float(stats.variance), float(stats.effective_sample_size)) == (2.0, 1.0, 2.0)
    # per row of a batch
    rows = tilted_mean(f64([[1.0, NAN], [2.0, 4.0]]), 0.0, nonfinite="ignore")
    assert rows.tolist() == [1.0, 3.0]


@pytest.mark.parametrize("tilt", [0.0, 1.0, INF])
def test_all_nonfinite_raises_even_when_ignoring(tilt: float) -> None:
    for function in (tilted_mean, tilted_weights):
        with pytest.raises(NonFiniteLossError, match="every loss value is non-finite"):
            function(f64([NAN, INF]), tilt, nonfinite="ignore")
    with pytest.raises(NonFiniteLossError, match="every loss value is non-finite"):
        tilted_mean(f64([[1.0, 2.0], [NAN, NAN]]), tilt, nonfinite="ignore")  # one bad row is enough


def test_bad_policy_and_empty_input_are_rejected() -> None:
    with pytest.raises(ValueError, match="nonfinite must be 'raise' or 'ignore', got 'skip'"):
        tilted_mean(f64([1.0]), 1.0, nonfinite="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nonfinite must be"):
        TiltedGradientAccumulator(1.0, nonfinite="skip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one loss"):
        tilted_mean([], 1.0)


@pytest.mark.parametrize("bad,error", [(NAN, ValueError), (-0.5, ValueError), (-INF, ValueError),
                                       ("1", TypeError), (True, TypeError), (None, TypeError)])
def test_check_tilt_names_the_argument_and_value(bad, error) -> None:
    with pytest.raises(error, match=r"sample_tilt must be .*got " + repr(bad).replace("(", r"\(")[:6]):
        check_tilt(bad, "sample_tilt")


def test_check_tilt_accepts_zero_inf_ints_and_tensors() -> None:
    assert check_tilt(0) == 0.0 and isinstance(check_tilt(0), float)
    assert check_tilt(INF) == INF
    assert check_tilt(torch.tensor(2.5)) == 2.5


# ----------------------------------------------------------------------------- streaming accumulator
def grads(*values: float) -> list[torch.Tensor]:
    return [torch.tensor([v], dtype=torch.float64) for v in values]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_accumulator_weights_gradients_by_softmax_of_tilt_times_loss(order) -> None:
    # L = (0, ln 3) at t = 1: weights (1/4, 3/4); gradient slots (1, 0) and (0, 1) expose them directly
    samples = [(0.0, grads(1.0, 0.0)), (LN3, grads(0.0, 1.0))]
    acc = TiltedGradientAccumulator(1.0)
    for index in order:
        acc.add(*samples[index])
    out = acc.result()
    assert [float(g) for g in out] == pytest.approx([0.25, 0.75], rel=1e-14)
    assert acc.weights().tolist() == pytest.approx([[0.25, 0.75][i] for i in order], rel=1e-14)
    assert len(acc) == 2 and acc.num_used == 2


def test_accumulator_at_zero_and_infinite_tilt() -> None:
    acc = TiltedGradientAccumulator(0.0)
    for loss, g in ((5.0, 2.0), (-1.0, 4.0), (100.0, 9.0)):
        acc.add(loss, grads(g))
    assert float(acc.result()[0]) == pytest.approx(5.0, rel=1e-15)  # plain mean of 2, 4, 9
    acc = TiltedGradientAccumulator(INF)
    for loss, g in ((1.0, 10.0), (3.0, 2.0), (2.0, 50.0), (3.0, 4.0), (0.5, 70.0)):
        acc.add(loss, grads(g))
    assert float(acc.result()[0]) == 3.0  # the two gradients at the max loss 3, averaged
    assert acc.weights().tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]


def test_accumulator_large_tilt_rescales_without_overflow() -> None:
    # t = 1e6, L = (1, 1 + 1e-6): weights proportional to (1, e); exp(t L) = exp(1e6) overflows float64,
    # so the online log-sum-exp must shift by the running max and rescale the running sum
    acc = TiltedGradientAccumulator(1e6)
    acc.add(1.0, grads(1.0))
    acc.add(1.0 + 1e-6, grads(0.0))
    w1 = math.e / (1.0 + math.e)
    assert float(acc.result()[0]) == pytest.approx(1.0 - w1, rel=1e-9)


def test_accumulator_none_slots_count_as_zero_and_single_sample_is_exact() -> None:
    acc = TiltedGradientAccumulator(1.0)
    acc.add(0.0, [torch.tensor([1.0], dtype=torch.float64), None])
    acc.add(LN3, [None, torch.tensor([1.0], dtype=torch.float64)])
    first, second = acc.result()
    assert float(first) == pytest.approx(0.25, rel=1e-14) and float(second) == pytest.approx(0.75, rel=1e-14)
    acc = TiltedGradientAccumulator(7.0)
    g = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float32)
    acc.add(2.0, [g, None])
    out = acc.result()
    assert torch.equal(out[0], g) and out[0] is not g and out[1] is None


def test_accumulator_nonfinite_policy_at_zero_tilt() -> None:
    acc = TiltedGradientAccumulator(0.0)
    acc.add(1.0, grads(2.0))
    with pytest.raises(NonFiniteLossError, match="sample 1 is nan"):
        acc.add(NAN, grads(100.0))
    ignoring = TiltedGradientAccumulator(0.0, nonfinite="ignore")
    for loss, g in ((1.0, 2.0), (NAN, 100.0), (INF, 100.0), (3.0, 4.0)):
        ignoring.add(loss, grads(g))
    assert float(ignoring.result()[0]) == 3.0  # mean of 2 and 4 only
    assert ignoring.num_used == 2 and len(ignoring) == 4
    assert ignoring.weights().tolist() == [0.5, 0.0, 0.0, 0.5]
    nothing = TiltedGradientAccumulator(1.0, nonfinite="ignore")
    nothing.add(NAN, grads(1.0))
    with pytest.raises(NonFiniteLossError, match="every loss was non-finite"):
        nothing.result()
    with pytest.raises(ValueError, match="no sample was added"):
        TiltedGradientAccumulator(1.0).result()


def test_accumulator_rejects_a_different_number_of_gradient_slots() -> None:
    acc = TiltedGradientAccumulator(1.0)
    acc.add(0.0, grads(1.0, 2.0))
    with pytest.raises(ValueError, match="expected 2 gradient tensors, got 1"):
        acc.add(1.0, grads(1.0))


# ----------------------------------------------------------------------------- shapes, dtypes, messages
def test_a_single_loss_and_batches_at_infinite_and_zero_tilt() -> None:
    assert tilted_weights(torch.tensor(5.0, dtype=torch.float64), 1.0).tolist() == [1.0]  # 0-dim: one sample
    assert float(tilted_mean(torch.tensor(5.0, dtype=torch.float64), 3.0)) == 5.0
    rows = f64([[1.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    assert tilted_weights(rows, INF).tolist() == [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]
    masked = f64([[1.0, NAN, 3.0], [NAN, NAN, 4.0]])
    assert tilted_weights(masked, 0.0, nonfinite="ignore").tolist() == [[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]]
    # t = inf over negative losses with a dropped entry: the max of the finite ones, not of a placeholder
    assert float(tilted_mean(f64([-1.0, NAN, -3.0]), INF, nonfinite="ignore")) == -1.0
    assert float(tilted_mean(f64([-1.0, NAN, -3.0]), 1.0, nonfinite="ignore")) == pytest.approx(
        math.log((math.exp(-1.0) + math.exp(-3.0)) / 2), rel=1e-15)
    shifted = f64([[0.0, LN3], [1000.0, 1000.0 + LN3]])
    assert tilted_mean(shifted, 1.0).tolist() == pytest.approx([math.log(2.0), 1000.0 + math.log(2.0)], rel=1e-15)


def test_float32_inputs_are_computed_in_float64_and_returned_in_float32() -> None:
    logw = tilted_log_weights(torch.tensor([0.0, 1.0], dtype=torch.float32), 1.0)
    assert logw.dtype == torch.float32
    # squares of 1e-30 underflow in float32; in float64 the effective sample size of two equal weights is 2
    assert float(effective_sample_size(torch.tensor([1e-30, 1e-30], dtype=torch.float32))) == 2.0


def test_error_messages_in_full() -> None:
    with pytest.raises(NonFiniteLossError) as info:
        tilted_mean(f64([NAN] * 12 + [1.0]), 1.0)
    assert str(info.value) == (
        f"non-finite loss values at positions {list(range(10))} (values {[NAN] * 10}); "
        "pass nonfinite='ignore' to give them zero weight instead")
    with pytest.raises(NonFiniteLossError, match=r"^every loss value is non-finite; nothing to average$"):
        tilted_mean(f64([NAN]), 1.0, nonfinite="ignore")
    with pytest.raises(ValueError, match=r"^weights sum to zero; the effective sample size is undefined$"):
        effective_sample_size(f64([0.0]))
    with pytest.raises(ValueError, match=r"^need at least one loss value, got an empty input$"):
        tilted_weights(f64([]), 1.0)
    with pytest.raises(ValueError, match=r"^no sample was added; nothing to average$"):
        TiltedGradientAccumulator(1.0).result()
    acc = TiltedGradientAccumulator(1.0)
    with pytest.raises(NonFiniteLossError, match=r"^loss of sample 0 is inf; the tilted average is undefined "
                                                 r"\(pass nonfinite='ignore' to skip such samples\)$"):
        acc.add(INF, grads(1.0))


def test_accumulator_rescaling_keeps_the_running_total_and_slots_that_appear_late() -> None:
    # t = 1, losses (0, 0, ln 3): weights (1, 1, 3) / 5; the third arrival rescales a total of 2
    acc = TiltedGradientAccumulator(1.0)
    for loss, g in ((0.0, 1.0), (0.0, 2.0), (LN3, 4.0)):
        acc.add(loss, grads(g))
    assert float(acc.result()[0]) == pytest.approx((1.0 + 2.0 + 3 * 4.0) / 5, rel=1e-14)
    # a slot first filled by a lighter, later sample gets that sample's weight 1/3 relative to the first
    acc = TiltedGradientAccumulator(1.0)
    acc.add(LN3, [None, torch.tensor([1.0], dtype=torch.float64)])
    acc.add(0.0, [torch.tensor([1.0], dtype=torch.float64), None])
    first, second = acc.result()
    assert (float(first), float(second)) == pytest.approx((0.25, 0.75), rel=1e-14)
    # t = inf: a new maximum whose gradient has an empty slot
    acc = TiltedGradientAccumulator(INF)
    acc.add(1.0, [torch.tensor([1.0]), torch.tensor([2.0])])
    acc.add(2.0, [None, torch.tensor([5.0])])
    first, second = acc.result()
    assert first is None and float(second) == 5.0


def test_accumulator_result_is_final_and_stable_when_read_twice() -> None:
    acc = TiltedGradientAccumulator(0.0)
    acc.add(1.0, grads(2.0))
    acc.add(5.0, grads(4.0))
    assert float(acc.result()[0]) == 3.0
    assert float(acc.result()[0]) == 3.0  # already normalised: not divided again
