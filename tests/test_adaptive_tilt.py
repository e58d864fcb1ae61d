"""tilt="auto": the ESS bisection of tilt.py and TSAM's predictive target-ESS rule.

Expected values come from closed forms (two-point and Gaussian ESS), from the definition of Kish's ESS
computed a second way (normalised softmax weights, :func:`effective_sample_size`), or from the rule's
stated recursion; never from the function under test on both sides.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from tiltedsam.optim import TSAM
from tiltedsam.optim.registry import REGISTRY, create_optimizer
from tiltedsam.optim.schedules import TiltScheduler
from tiltedsam.tilt import (
    NonFiniteLossError,
    effective_sample_size,
    effective_sample_size_at_tilt,
    tilt_for_ess,
)
from conftest import closure_for, tiny_classifier


def kish_ess(losses: list[float], tilt: float) -> float:
    """ESS from the normalised weights softmax(tilt * L) (float64), a second route to the same number."""
    weights = torch.softmax(torch.tensor(losses, dtype=torch.float64) * tilt, dim=0)
    return float(effective_sample_size(weights))


loss_vectors = st.lists(st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False), min_size=2, max_size=16)


# ---------------------------------------------------------------------- ESS(tau) and the bisection
@settings(max_examples=200, deadline=None)
@given(losses=loss_vectors, alpha=st.floats(0.05, 0.99))
def test_bisection_hits_the_target_ess(losses: list[float], alpha: float) -> None:
    max_tilt = 1e6
    tau = tilt_for_ess(losses, alpha, max_tilt=max_tilt)
    target = alpha * len(losses)
    assert 0.0 <= tau <= max_tilt
    if tau == max_tilt:  # the cap: even the largest allowed tilt keeps ESS above the target
        assert kish_ess(losses, max_tilt) >= target * (1 - 1e-9)
    else:
        assert tau > 0.0
        assert kish_ess(losses, tau) == pytest.approx(target, rel=1e-6)
        # tau is the *largest* tilt with ESS >= target: slightly more tilt drops below it
        assert kish_ess(losses, tau * (1 + 1e-4) + 1e-300) < target


@settings(max_examples=200, deadline=None)
@given(losses=loss_vectors, taus=st.lists(st.floats(0.0, 1e4), min_size=2, max_size=8))
def test_ess_never_increases_with_tilt(losses: list[float], taus: list[float]) -> None:
    taus = sorted(taus)
    values = [effective_sample_size_at_tilt(losses, t) for t in taus]
    n = len(losses)
    for a, b in zip(values, values[1:]):
        assert b <= a * (1 + 1e-12)
    assert all(1.0 - 1e-12 <= v <= n * (1 + 1e-12) for v in values)
    assert values[0] == pytest.approx(kish_ess(losses, taus[0]), rel=1e-9)


def test_two_losses_closed_form() -> None:
    # weights (1, x), x = e^{tau d}: ESS = (1 + x)^2 / (1 + x^2) = 2 alpha. For alpha = 3/4:
    # x^2 - 4x + 1 = 0 -> x = 2 + sqrt(3), tau = ln(2 + sqrt(3)) / d.
    for d in (1e-3, 0.5, 7.0):
        tau = tilt_for_ess([3.0, 3.0 + d], 0.75, max_tilt=1e9)
        assert tau == pytest.approx(math.log(2 + math.sqrt(3)) / d, rel=1e-10)


def test_gaussian_losses_approach_the_closed_form() -> None:
    # E[e^{tau L}]^2 / E[e^{2 tau L}] = exp(-tau^2 sigma^2) for L ~ N(mu, sigma^2)
    sigma, alpha = 0.02, 0.5
    n = 20001
    quantiles = stats.norm.ppf((torch.arange(n, dtype=torch.float64) + 0.5).numpy() / n)
    losses = (1.7 + sigma * quantiles).tolist()
    tau = tilt_for_ess(losses, alpha, max_tilt=1e6)
    assert tau == pytest.approx(math.sqrt(math.log(1 / alpha)) / sigma, rel=0.02)


def test_shift_and_scale() -> None:
    losses = [0.3, 0.9, 0.1, 0.45]
    tau = tilt_for_ess(losses, 0.6, max_tilt=1e6)
    assert tilt_for_ess([x + 1e4 for x in losses], 0.6, max_tilt=1e6) == pytest.approx(tau, rel=1e-9)
    assert tilt_for_ess([10 * x for x in losses], 0.6, max_tilt=1e6) == pytest.approx(tau / 10, rel=1e-9)


def test_cap_and_tied_losses() -> None:
    assert tilt_for_ess([2.0, 2.0, 2.0], 0.5, max_tilt=123.0) == 123.0  # tied: ESS = n for every tau
    assert tilt_for_ess([2.0], 0.5, max_tilt=7.0) == 7.0  # one sample: ESS = 1 always
    assert tilt_for_ess([0.0, 1e-9, 2e-9], 0.5, max_tilt=100.0) == 100.0  # nearly tied: the cap binds
    assert tilt_for_ess([0.0, 1.0], 0.5, max_tilt=100.0) == 100.0  # alpha s = 1 <= ESS for every tau
    # two tied at the max: ESS(inf) = 2, so a target of 2.5 of 4 is reached, 1.6 of 4 is not
    assert tilt_for_ess([0.0, 0.0, 1.0, 1.0], 0.4, max_tilt=50.0) == 50.0
    assert tilt_for_ess([0.0, 0.0, 1.0, 1.0], 0.625, max_tilt=50.0) < 50.0
    assert tilt_for_ess([0.0, 1.0, 5.0], 1.0, max_tilt=50.0) == 0.0  # alpha = 1: only uniform weights
    assert effective_sample_size_at_tilt([0.0, 0.0, 1.0, 1.0], math.inf) == 2.0


def test_huge_losses_and_tilts_do_not_overflow() -> None:
    assert math.isfinite(effective_sample_size_at_tilt([1e4, 1e4 + 1.0, 1e4 + 3.0], 1e6))
    tau = tilt_for_ess([1e4, 1e4 + 1.0, 1e4 + 3.0], 0.5, max_tilt=1e8)
    assert kish_ess([0.0, 1.0, 3.0], tau) == pytest.approx(1.5, rel=1e-6)


def test_bad_input() -> None:
    for alpha in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="target_ess"):
            tilt_for_ess([0.0, 1.0], alpha, max_tilt=10.0)
    with pytest.raises(ValueError, match="max_tilt"):
        tilt_for_ess([0.0, 1.0], 0.5, max_tilt=math.inf)
    with pytest.raises(ValueError, match="max_tilt"):
        tilt_for_ess([0.0, 1.0], 0.5, max_tilt=-1.0)
    with pytest.raises(NonFiniteLossError):
        tilt_for_ess([0.0, float("nan")], 0.5, max_tilt=10.0)
    # "ignore" drops the non-finite entry: the answer is that of the finite ones
    assert tilt_for_ess([0.0, float("nan"), 1.0], 0.75, max_tilt=1e3, nonfinite="ignore") == pytest.approx(
        math.log(2 + math.sqrt(3)), rel=1e-10)
    with pytest.raises(ValueError, match="empty"):
        tilt_for_ess([], 0.5, max_tilt=10.0)


# ---------------------------------------------------------------------- TSAM(tilt="auto")
def scripted_steps(optimizer: TSAM, param: torch.Tensor, losses_per_step: list[list[float]]) -> list[dict]:
    """Run steps in which sample j's loss is losses[j] (zero gradient: the tilt rule sees only the values)."""
    records = []
    for losses in losses_per_step:
        values = iter([v for v in losses for _ in range(2)])  # the ascent sampler: noise point, then eps
        for evaluation in optimizer.manual_step():
            value = next(values)
            loss = (param * 0.0).sum() + value
            loss.backward()
            evaluation.record(loss)
        records.append({"extra": dict(optimizer.last_step.extra), "ess": optimizer.last_step.effective_sample_size,
                        "weights": list(optimizer.last_step.weights)})
    return records


def test_auto_rule_follows_its_recursion() -> None:
    param = nn.Parameter(torch.zeros(3, dtype=torch.float64))  # losses recorded exactly
    beta, alpha, cap = 0.7, 0.5, 400.0
    optimizer = TSAM([param], lr=0.1, tilt="auto", target_ess=alpha, max_tilt=cap, tilt_smoothing=beta,
                     num_samples=3, noise_radius=0.1, seed=0)
    steps = [[1.0, 1.2, 1.5], [0.5, 0.52, 0.6], [2.0, 2.0, 2.0], [1.0, 1.2, 1.5]]
    records = scripted_steps(optimizer, param, steps)
    # hand-computed recursion m_k = beta m_{k-1} + (1 - beta) log tau*_k; tau_{k+1} = exp(m_k); t = 2 tau
    tau_star = [tilt_for_ess(losses, alpha, max_tilt=cap / 2) for losses in steps]
    assert tau_star[2] == cap / 2  # tied losses ask for the cap (of the aggregation tilt: max_tilt - delta)
    m = math.log(tau_star[0])
    expected_tau = [0.0, math.exp(m)]
    for k in (1, 2):
        m = beta * m + (1 - beta) * math.log(tau_star[k])
        expected_tau.append(math.exp(m))
    for k, record in enumerate(records):
        assert record["extra"]["auto_tilt"] == pytest.approx(tau_star[k], rel=1e-12)
        assert record["extra"]["aggregation_tilt"] == pytest.approx(expected_tau[k], rel=1e-12)
        assert record["extra"]["tilt"] == pytest.approx(2 * expected_tau[k], rel=1e-12)
        assert record["extra"]["sample_tilt"] == pytest.approx(expected_tau[k], rel=1e-12)  # delta = t / 2
        # the weights actually used are softmax(tau_k L): check against that
        expected_weights = torch.softmax(torch.tensor(steps[k], dtype=torch.float64) * expected_tau[k], 0)
        assert record["weights"] == pytest.approx(expected_weights.tolist(), rel=1e-9)
    assert records[0]["ess"] == pytest.approx(3.0)  # the first step has no history: uniform weights
    assert optimizer.tilt == pytest.approx(2 * math.exp(beta * m + (1 - beta) * math.log(tau_star[3])), rel=1e-12)


def test_auto_hits_the_target_when_the_losses_repeat() -> None:
    param = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # losses recorded exactly
    optimizer = TSAM([param], lr=0.1, tilt="auto", target_ess=0.6, num_samples=5, noise_radius=0.1, seed=1)
    records = scripted_steps(optimizer, param, [[0.1, 0.4, 0.2, 0.9, 0.3]] * 3)
    for record in records[1:]:
        assert record["ess"] == pytest.approx(0.6 * 5, rel=1e-9)


def test_auto_tilt_is_capped() -> None:
    param = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # losses recorded exactly
    optimizer = TSAM([param], lr=0.1, tilt="auto", max_tilt=30.0, num_samples=3, noise_radius=0.1, seed=1,
                     sample_tilt=4.0)
    records = scripted_steps(optimizer, param, [[1.0, 1.0 + 1e-7, 1.0 + 2e-7]] * 3)
    # explicit delta = 4: aggregation cap = 30 - 4, t = tau + 4 <= 30
    assert records[1]["extra"]["aggregation_tilt"] == pytest.approx(26.0)
    assert records[2]["extra"]["tilt"] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="max_tilt"):
        TSAM([param], tilt="auto", max_tilt=3.0, sample_tilt=4.0)


def test_naive_sampler_auto_tilt_is_the_aggregation_tilt() -> None:
    param = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # losses recorded exactly
    optimizer = TSAM([param], lr=0.1, tilt="auto", sampler="naive", sampler_options={"radius": 0.1},
                     num_samples=3, seed=1)
    losses = [0.1, 0.5, 0.2]
    for _ in range(2):
        for evaluation, value in zip(optimizer.manual_step(), losses):
            ((param * 0.0).sum() + value).backward()
            evaluation.record((param * 0.0).sum() + value)
    tau = tilt_for_ess(losses, 0.5, max_tilt=optimizer.max_tilt)
    assert optimizer.last_step.extra["tilt"] == pytest.approx(tau, rel=1e-12)
    assert optimizer.last_step.effective_sample_size == pytest.approx(1.5, rel=1e-9)


def test_bad_auto_settings() -> None:
    param = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # losses recorded exactly
    with pytest.raises(ValueError, match="target_ess"):
        TSAM([param], tilt="auto", target_ess=0.0)
    with pytest.raises(ValueError, match="max_tilt"):
        TSAM([param], tilt="auto", max_tilt=math.inf)
    with pytest.raises(ValueError, match="tilt_smoothing"):
        TSAM([param], tilt="auto", tilt_smoothing=1.0)
    with pytest.raises((TypeError, ValueError), match="tilt"):
        TSAM([param], tilt="automatic")


def test_switching_auto_off_and_on() -> None:
    param = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # losses recorded exactly
    optimizer = TSAM([param], lr=0.1, tilt="auto", num_samples=3, noise_radius=0.1, seed=0)
    scripted_steps(optimizer, param, [[1.0, 1.1, 1.3]])
    chosen = optimizer.tilt
    optimizer.tilt = 5.0
    assert not optimizer.auto_tilt and optimizer.tilt == 5.0 and optimizer.aggregation_tilt == 2.5
    optimizer.tilt = "auto"
    assert optimizer.auto_tilt and optimizer.tilt == chosen  # the smoothed state was kept


def make_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return tiny_classifier(0, inputs=5, hidden=8)


def test_state_dict_round_trip_is_bit_exact() -> None:
    net, x, y = make_problem()
    settings_ = dict(lr=0.1, tilt="auto", target_ess=0.7, max_tilt=500.0, tilt_smoothing=0.8, noise_radius=1.0,
                     seed=3)
    optimizer = TSAM(net.parameters(), **settings_)
    for _ in range(3):
        optimizer.step(closure_for(net, x, y))
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain data: loads without pickle
    for _ in range(3):
        optimizer.step(closure_for(net, x, y))
    tilts_a = optimizer.tilt

    net_b, _, _ = make_problem()
    net_b.load_state_dict(saved["model"])
    restored = TSAM(net_b.parameters(), **{**settings_, "target_ess": 0.4, "seed": 99})
    restored.load_state_dict(saved["optimizer"])
    assert restored.target_ess == 0.7 and restored.auto_tilt
    for _ in range(3):
        restored.step(closure_for(net_b, x, y))
    assert restored.tilt == tilts_a  # bit-exact: the same float
    for p, q in zip(net.parameters(), net_b.parameters()):
        assert torch.equal(p, q)


def test_scheduler_moves_the_cap_of_auto() -> None:
    net, x, y = make_problem()
    optimizer = TSAM(net.parameters(), lr=0.1, tilt="auto", max_tilt=40.0, noise_radius=5.0, seed=0)
    scheduler = TiltScheduler(optimizer, kind="increase", total_steps=5)
    assert scheduler.schedules_cap and optimizer.max_tilt == 0.0 and optimizer.auto_tilt
    used = []
    for k in range(5):
        optimizer.step(closure_for(net, x, y))
        used.append((optimizer.last_step.extra["tilt"], 40.0 * k / 4))
        scheduler.step()
    assert used[0][0] == 0.0
    for tilt, cap in used:
        assert tilt <= cap + 1e-12
    assert optimizer.max_tilt == 40.0 and optimizer.auto_tilt
    state = scheduler.state_dict()
    other = TiltScheduler(TSAM(net.parameters(), tilt="auto", max_tilt=40.0), kind="increase", total_steps=5)
    other.load_state_dict(state)
    assert other.optimizer.max_tilt == 40.0


# ---------------------------------------------------------------------- DDP: ranks agree on the tilt
WORLD = 2


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        net, x, y = make_problem()
        x, y = x[rank * 16:(rank + 1) * 16], y[rank * 16:(rank + 1) * 16]
        x = x * (1.0 + 2.0 * rank)  # the halves differ, so local losses (and a local tilt) would differ
        model = nn.parallel.DistributedDataParallel(net)
        torch.manual_seed(100 + rank)  # per-rank global RNG: the library must not depend on it
        optimizer = TSAM(model.parameters(), lr=0.1, tilt="auto", target_ess=0.5, noise_radius=2.0, model=model)
        tilts, losses = [], []
        for _ in range(4):
            optimizer.step(closure_for(model, x, y))
            tilts.append(optimizer.last_step.extra["tilt"])
            losses.append(list(optimizer.last_step.losses))
        torch.save({"tilts": tilts, "losses": losses, "next_tilt": optimizer.tilt,
                    "params": [p.detach().clone() for p in model.parameters()]}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~10 s idle, 40 s on the loaded machine
def test_ddp_ranks_choose_identical_tilts(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks: list[dict[str, Any]] = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    assert ranks[0]["tilts"] == ranks[1]["tilts"]  # exactly equal floats
    assert ranks[0]["next_tilt"] == ranks[1]["next_tilt"]
    assert ranks[0]["tilts"][0] == 0.0 and all(t > 0 for t in ranks[0]["tilts"][1:])
    for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p, q)
    # the rule used the global losses: tau*_1 from step 1's (all-reduced) losses sets step 2's tilt
    tau = tilt_for_ess(ranks[0]["losses"][0], 0.5, max_tilt=500.0)  # default max_tilt 1000 = 2 tau_max
    assert ranks[0]["tilts"][1] == pytest.approx(2 * tau, rel=1e-12)


# ---------------------------------------------------------------------- the 1-D toy
def test_toy_population_ess_of_a_linear_loss_is_closed_form() -> None:
    from tiltedsam.toy.adaptive import population_ess_fraction, population_tilt_for_ess

    # L(theta + eps) = a (theta + eps), eps ~ U[-rho, rho]: E[e^{tL}] ~ sinh(x)/x with x = t a rho, so
    # ESS/s = (sinh(x)/x)^2 / (sinh(2x)/(2x))
    slope, rho = 3.0, 0.2

    def line(theta):
        return slope * theta

    for tilt in (0.0, 0.5, 4.0, 40.0):
        x = tilt * slope * rho
        expected = 1.0 if x == 0 else (math.sinh(x) / x) ** 2 / (math.sinh(2 * x) / (2 * x))
        assert population_ess_fraction(line, 0.7, rho, tilt) == pytest.approx(expected, rel=1e-9)
    tilt = population_tilt_for_ess(line, 0.7, rho, 0.5, max_tilt=1e4)
    assert population_ess_fraction(line, 0.7, rho, tilt) == pytest.approx(0.5, rel=1e-8)
    assert population_tilt_for_ess(lambda t: 0 * t + 1.0, 0.7, rho, 0.5, max_tilt=33.0) == 33.0  # flat: the cap


def test_toy_descent_uses_the_previous_steps_tilt() -> None:
    from tiltedsam.toy.adaptive import descend_auto, population_ess_fraction, population_tilt_for_ess

    run = descend_auto("fig1", 0.5, 0.005, 3, 0.2, target_ess=0.5, max_tilt=1000.0, tilt_smoothing=0.0)
    assert run.tilts[0] == 0.0 and run.ess_fraction[0] == pytest.approx(1.0)
    for k in (1, 2):  # smoothing 0: step k uses exactly step k-1's choice, made at theta_{k-1}
        assert run.tilts[k] == pytest.approx(population_tilt_for_ess("fig1", run.thetas[k - 1], 0.2, 0.5,
                                                                     max_tilt=1000.0), rel=1e-12)
        assert run.ess_fraction[k] == pytest.approx(population_ess_fraction("fig1", run.thetas[k], 0.2, run.tilts[k]),
                                                    rel=1e-9)
    slow = descend_auto("fig1", 0.5, 1e-8, 2, 0.2, target_ess=0.5, tilt_smoothing=0.0)
    assert slow.ess_fraction[1] == pytest.approx(0.5, abs=1e-4)  # theta barely moved: the target is met
    sampled = descend_auto("fig1", 0.5, 0.005, 3, 0.2, num_samples=7, seed=1)
    assert sampled.tilts[0] == 0.0 and sampled.tilts[1] == pytest.approx(sampled.chosen[0])


# ---------------------------------------------------------------------- the harness logs the chosen tilt
def test_harness_logs_the_epoch_mean_tilt_and_resumes_auto_exactly(tmp_path: Path) -> None:
    import csv
    import json

    from tiltedsam.harness.config import load_config
    from tiltedsam.harness.train import RunInterrupted, train

    def config(out: Path):
        return load_config(None, ["data.name=digits", "data.limit=300", "data.label_noise=0.2", "model.name=mlp",
                                  "optimizer.name=tsam",
                                  'optimizer.settings={tilt = "auto", num_samples = 3, noise_radius = 3.0}',
                                  "optimizer.lr=0.05", "budget.amount=3", "run.progress=false", "run.num_threads=1",
                                  f"run.out_dir={json.dumps(str(out))}"])

    def rows(out: Path) -> list[dict[str, str]]:
        with open(out / "metrics.csv") as handle:
            return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in csv.DictReader(handle)]

    train(config(tmp_path / "a"))
    with pytest.raises(RunInterrupted):
        train(config(tmp_path / "b"), stop_after_epochs=1)
    train(config(tmp_path / "b"), resume=True)
    straight = rows(tmp_path / "a")
    assert straight == rows(tmp_path / "b")  # the smoothed tilt came back from the checkpoint bit-exactly
    tilts = [float(r["tilt"]) for r in straight]
    assert all(math.isfinite(t) and 0 < t <= 1000.0 for t in tilts)
    assert all(float(r["effective_sample_size"]) < 3.0 for r in straight[1:])  # the tilt did bite


@pytest.mark.parametrize("name", [n for n, spec in REGISTRY.items() if issubclass(spec.cls, TSAM)])
def test_every_registered_tsam_variant_takes_auto(name: str) -> None:
    net, x, y = make_problem()
    optimizer = create_optimizer(name, net.parameters(), lr=0.1, tilt="auto", target_ess=0.5, seed=0)
    assert optimizer.auto_tilt
    for _ in range(3):
        optimizer.step(closure_for(net, x, y))
    extra = optimizer.last_step.extra
    assert extra["aggregation_tilt"] > 0
    # t = tau + delta: delta = t/2 for samplers of exp(delta L), 0 for the naive sampler (samples from mu)
    assert extra["tilt"] == pytest.approx(extra["aggregation_tilt"] + extra["sample_tilt"], rel=1e-12)
    state = optimizer.state_dict()
    again = create_optimizer(name, net.parameters(), lr=0.1, tilt="auto")
    again.load_state_dict(state)
    assert again.tilt == optimizer.tilt
