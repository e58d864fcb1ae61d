"""The 1-D toy problems: exact objectives against closed forms and independent quadrature, the
limits and monotonicity of L^t in t, the paper's Fig. 5 claim, gradients against finite
differences, gradient descent, and the ``tiltedsam toy`` command."""

import csv
import math

import numpy as np
import pytest
from scipy import integrate, stats

from tiltedsam.cli import main
from tiltedsam.toy import (
    Run,
    as_problem,
    descend,
    descend_many,
    global_minimiser,
    gradient,
    neighbourhood_stats,
    objective,
    sam_maximiser,
)
from tiltedsam.toy.descent import _sampled_gradients
from tiltedsam.toy.problems import fig1_loss, fig5_loss

INF = math.inf


def reference_tsam(loss, theta, rho, tilt, density=None):
    """L^t by scipy's adaptive quadrature, an independent method.

    The interval is cut geometrically towards both ends, where a large tilt makes a boundary layer.
    """
    density = density or (lambda e: 1.0 / (2 * rho))
    layers = rho * np.geomspace(1e-8, 0.5, 12)
    cuts = np.unique(np.concatenate([[-rho, rho], -rho + layers, rho - layers]))
    peak = max(loss(theta + e) for e in np.linspace(-rho, rho, 4001))
    if tilt == 0:
        integrand = lambda e: density(e) * loss(theta + e)  # noqa: E731
    else:
        integrand = lambda e: density(e) * math.exp(tilt * (loss(theta + e) - peak))  # noqa: E731
    total = sum(integrate.quad(integrand, a, b, epsabs=1e-16, epsrel=1e-13, limit=200)[0] for a, b in zip(cuts, cuts[1:]))
    return total if tilt == 0 else peak + math.log(total) / tilt


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("rho", [0.1, 0.3, 0.5, 0.8])
def test_sam_objective_of_the_piecewise_problem_matches_its_closed_form(rho):
    # around 1: max |θ+ε-1| - 0.01 = |θ-1| + ρ - 0.01; around 3: max (θ+ε-3)² = (|θ-3| + ρ)²
    # (windows that stay on one piece: θ + ρ <= 2 around 1, θ - ρ > 2 around 3)
    near_one = 1.0 + np.array([0.0, 0.05, -0.1])
    near_three = 3.0 + np.array([0.0, 0.05, -0.1])
    np.testing.assert_allclose(objective("fig5", "sam", near_one, rho), np.abs(near_one - 1) + rho - 0.01, atol=1e-14)
    np.testing.assert_allclose(objective("fig5", "sam", near_three, rho), (np.abs(near_three - 3) + rho) ** 2, atol=1e-14)
    assert objective("fig5", "sam", 1.0, rho) == pytest.approx(rho - 0.01, abs=1e-14)
    assert objective("fig5", "sam", 3.0, rho) == pytest.approx(rho**2, abs=1e-14)


@pytest.mark.parametrize("tilt", [1e-9, 0.01, 1.0, 30.0, 1e3])
@pytest.mark.parametrize("rho", [0.1, 0.6])
def test_tsam_objective_at_the_sharp_minimum_matches_its_closed_form(tilt, rho):
    # (1/t) log( (1/2ρ) ∫ e^{t(|ε| - 0.01)} dε ) = -0.01 + (1/t) log( expm1(tρ) / (tρ) )
    x = tilt * rho
    excess = x / 2 + x**2 / 6 + x**3 / 24 + x**4 / 120 if x < 1e-3 else math.expm1(x) / x - 1  # no cancellation
    closed = -0.01 + math.log1p(excess) / tilt
    assert objective("fig5", "tsam", 1.0, rho, tilt) == pytest.approx(closed, rel=1e-12, abs=1e-14)


def test_mean_objective_matches_closed_forms_including_across_the_jump():
    rho = 0.3
    assert objective("fig5", "tsam", 1.0, rho, 0.0) == pytest.approx(rho / 2 - 0.01, abs=1e-14)
    assert objective("fig5", "tsam", 3.0, rho, 0.0) == pytest.approx(rho**2 / 3, abs=1e-14)
    # θ = 2: half the window on the linear piece (x - 1.01 on [1.7, 2]), half on (x - 3)² on [2, 2.3]
    linear = (2.0**2 - 1.7**2) / 2 - 1.01 * 0.3
    quadratic = ((2.3 - 3) ** 3 - (2.0 - 3) ** 3) / 3
    assert objective("fig5", "tsam", 2.0, rho, 0.0) == pytest.approx((linear + quadratic) / (2 * rho), abs=1e-14)


@pytest.mark.parametrize("tilt", [0.0, 0.5, 5.0, 60.0, 300.0])
def test_fig1_objective_matches_independent_adaptive_quadrature(tilt):
    loss = lambda x: float(fig1_loss(np.array(x)))  # noqa: E731
    for theta in (0.35, 0.9, 1.63, 2.4):
        expected = reference_tsam(loss, theta, 0.2, tilt)
        assert objective("fig1", "tsam", theta, 0.2, tilt) == pytest.approx(expected, abs=1e-11)


def test_gaussian_measure_is_a_truncated_normal_with_std_half_rho():
    rho = 0.4
    density = stats.truncnorm(-2, 2, scale=rho / 2).pdf
    loss = lambda x: float(fig5_loss(np.array(x)))  # noqa: E731
    for theta, tilt in [(1.1, 0.0), (1.9, 2.0), (2.1, 8.0)]:  # windows holding the kink and the jump
        expected = reference_tsam(loss, theta, rho, tilt, density)
        assert objective("fig5", "tsam", theta, rho, tilt, "gaussian") == pytest.approx(expected, abs=1e-9)
    # its variance is that of the truncated normal for a linear loss
    mean, variance = neighbourhood_stats(lambda x: x, 0.0, rho, measure="gaussian")
    assert mean == pytest.approx(0.0, abs=1e-15)
    assert variance == pytest.approx(stats.truncnorm(-2, 2, scale=rho / 2).var(), rel=1e-12)


def test_neighbourhood_variance_of_a_quadratic_is_exact():
    # θ = 0, L = x², ε ~ U[-ρ, ρ]: E = ρ²/3, var = E[ε⁴] - (ρ²/3)² = ρ⁴/5 - ρ⁴/9
    rho = 0.7
    mean, variance = neighbourhood_stats(lambda x: x**2, 0.0, rho)
    assert mean == pytest.approx(rho**2 / 3, rel=1e-13)
    assert variance == pytest.approx(rho**4 * (1 / 5 - 1 / 9), rel=1e-12)
    assert neighbourhood_stats("fig1", 0.7, 0.0) == (pytest.approx(float(fig1_loss(np.array(0.7)))), 0.0)


# ----------------------------------------------------------------------------- tilt limits, monotonicity


TILT_LADDER = [0.0, 1e-8, 1e-3, 0.1, 1.0, 3.0, 10.0, 50.0, 300.0, 1e4, INF]


@pytest.mark.parametrize("problem", ["fig1", "fig5"])
@pytest.mark.parametrize("measure", ["uniform", "gaussian"])
def test_tilted_objective_is_non_decreasing_in_t_at_every_theta(problem, measure):
    grid = np.linspace(*as_problem(problem).domain, 157)
    values = np.stack([objective(problem, "tsam", grid, 0.3, t, measure) for t in TILT_LADDER])
    steps = np.diff(values, axis=0)
    assert steps.min() >= -1e-12 * (1 + np.abs(values).max())


@pytest.mark.parametrize("problem", ["fig1", "fig5"])
def test_tilted_objective_tends_to_the_mean_and_to_the_max(problem):
    grid = np.linspace(*as_problem(problem).domain, 41)
    mean = objective(problem, "tsam", grid, 0.25, 0.0)
    peak = objective(problem, "sam", grid, 0.25)
    np.testing.assert_allclose(objective(problem, "tsam", grid, 0.25, 1e-9), mean, atol=1e-8)
    # Eq. 59: L^t = E L + (t/2) var L + O(t²)
    _, variance = neighbourhood_stats(problem, grid, 0.25)
    small = 1e-4
    np.testing.assert_allclose((objective(problem, "tsam", grid, 0.25, small) - mean) / small, variance / 2,
                               rtol=2e-3, atol=1e-6)
    gaps = [np.max(peak - objective(problem, "tsam", grid, 0.25, t)) for t in (10.0, 100.0, 1e3, 1e4)]
    assert all(g >= -1e-12 for g in gaps)
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 2e-3
    np.testing.assert_array_equal(objective(problem, "tsam", grid, 0.25, INF), peak)


def test_zero_radius_reduces_every_objective_to_the_loss():
    theta = np.array([0.4, 1.3, 2.2])
    loss = fig1_loss(theta)
    for kind, tilt in [("sam", None), ("tsam", 0.0), ("tsam", 7.0), ("tsam", INF)]:
        np.testing.assert_array_equal(objective("fig1", kind, theta, 0.0, tilt), loss)


# ----------------------------------------------------------------------------- the paper's Fig. 5 / 6 claims


def test_sam_global_minimiser_is_the_sharp_minimum_at_rho_zero_and_the_flat_one_after():
    assert global_minimiser("fig5", "sam", 0.0).theta == pytest.approx(1.0, abs=1e-9)
    for rho in np.round(np.arange(0.1, 0.81, 0.1), 1):
        best = global_minimiser("fig5", "sam", rho)
        assert best.theta == pytest.approx(3.0, abs=1e-6), rho
        assert best.value == pytest.approx(rho**2, abs=1e-10)


def test_tsam_small_tilt_global_minimiser_moves_to_the_flat_minimum():
    assert global_minimiser("fig5", "tsam", 0.0, 0.01).theta == pytest.approx(1.0, abs=1e-9)
    for rho in (0.1, 0.4, 0.8):
        assert global_minimiser("fig5", "tsam", rho, 0.01).theta == pytest.approx(3.0, abs=1e-5)


# ----------------------------------------------------------------------------- gradients


def central_difference(problem, kind, theta, rho, tilt, measure, step=1e-6):
    plus = objective(problem, kind, theta + step, rho, tilt, measure)
    minus = objective(problem, kind, theta - step, rho, tilt, measure)
    return (plus - minus) / (2 * step)


# away from the non-differentiable points of each SAM objective (ties of two maxima)
POINTS = {"fig1": np.array([0.27, 0.52, 0.9, 1.31, 1.77, 2.24]),
          "fig5": np.array([0.6, 1.13, 1.55, 1.9, 2.1, 2.45, 3.22, 3.7])}


@pytest.mark.parametrize("problem", ["fig1", "fig5"])
@pytest.mark.parametrize("kind,tilt", [("erm", None), ("sam", None), ("tsam", 0.0), ("tsam", 0.01), ("tsam", 2.0),
                                       ("tsam", 40.0), ("tsam", INF)])
@pytest.mark.parametrize("measure", ["uniform", "gaussian"])
def test_exact_gradient_matches_a_finite_difference_of_the_exact_objective(problem, kind, tilt, measure):
    theta = POINTS[problem]
    exact = gradient(problem, kind, theta, 0.2, tilt, measure)
    np.testing.assert_allclose(exact, central_difference(problem, kind, theta, 0.2, tilt, measure), atol=2e-7, rtol=1e-6)


def test_gradient_across_a_jump_needs_the_jump_term():
    # windows around θ = 2 contain the +0.01 jump of fig5: plain Eq. 4 (the average of L') misses it
    theta = np.array([1.9, 2.05])
    x = np.linspace(-0.2, 0.2, 200001)
    eq4_only = np.array([np.mean(np.where(t + x <= 2, np.sign(t + x - 1), 2 * (t + x - 3))) for t in theta])
    exact = gradient("fig5", "tsam", theta, 0.2, 0.0)
    np.testing.assert_allclose(exact - eq4_only, 0.01 / 0.4, atol=1e-4)  # density 1/(2ρ) times the jump


def test_callable_problems_work_with_and_without_a_derivative():
    def quartic(x):
        return x**4 - x**2

    theta = np.array([-0.8, 0.1, 0.55])
    # E (θ+ε)² over U[-ρ, ρ] = θ² + ρ²/3; E (θ+ε)⁴ = θ⁴ + 2θ²ρ² + ρ⁴/5
    rho = 0.3
    expected = theta**4 + 2 * theta**2 * rho**2 + rho**4 / 5 - (theta**2 + rho**2 / 3)
    np.testing.assert_allclose(objective(quartic, "tsam", theta, rho, 0.0), expected, rtol=1e-13)
    np.testing.assert_allclose(gradient(quartic, "erm", theta, rho), 4 * theta**3 - 2 * theta, atol=1e-9)
    scalar_only = as_problem(lambda v: math.sin(3 * v), derivative=lambda v: 3 * math.cos(3 * v))
    np.testing.assert_allclose(gradient(scalar_only, "tsam", theta, rho, 1.5),
                               central_difference(scalar_only, "tsam", theta, rho, 1.5, "uniform"), atol=1e-7)


def test_sam_maximiser_finds_interior_and_edge_maxima():
    value, where, at_edge = sam_maximiser(lambda x: -((x - 0.123) ** 2), np.array([0.0, 1.0]), 0.5)
    np.testing.assert_allclose(value, [0.0, -((0.5 - 0.123) ** 2)], atol=1e-15)
    np.testing.assert_allclose(where, [0.123, 0.5], atol=1e-9)
    assert list(at_edge) == [False, True]
    # an interior maximum leaves the SAM objective locally constant: zero gradient
    assert gradient(lambda x: -(x**2), "sam", 0.05, 0.5) == 0.0


# ----------------------------------------------------------------------------- descent


def test_descend_on_a_convex_quadratic_converges_to_the_minimiser():
    trajectory = descend(lambda x: (x - 0.7) ** 2, "tsam", 3.0, 0.1, 200, 0.3, 5.0)
    # L^t of a quadratic under a symmetric μ is minimised at the same point
    assert trajectory.final_theta == pytest.approx(0.7, abs=1e-9)
    assert len(trajectory.thetas) == 201 and trajectory.thetas[0] == 3.0
    assert trajectory.neighbourhood_variance == pytest.approx(0.3**4 * (1 / 5 - 1 / 9), rel=1e-9)


def test_descent_equivalences():
    common = dict(start=0.5, lr=0.005, steps=150)
    erm = descend("fig1", "erm", rho=0.2, **common)
    np.testing.assert_array_equal(descend("fig1", "sam", rho=0.0, **common).thetas, erm.thetas)
    np.testing.assert_array_equal(descend("fig1", "tsam", rho=0.0, tilt=3.0, **common).thetas, erm.thetas)
    np.testing.assert_array_equal(descend("fig1", "tsam", rho=0.2, tilt=INF, **common).thetas,
                                  descend("fig1", "sam", rho=0.2, **common).thetas)


def test_batched_runs_equal_single_runs_and_are_reproducible():
    runs = [Run("erm"), Run("sam"), Run("sam-ascent"), Run("tsam", 0.0), Run("tsam", 5.0), Run("tsam", 5.0, 20),
            Run("tsam", 0.5, 20), Run("sam", None, 7)]
    batch = descend_many("fig1", runs, 0.5, 0.005, 60, 0.2, seed=3)
    for run, trajectory in zip(runs, batch):
        single = descend("fig1", run.kind, 0.5, 0.005, 60, 0.2, run.tilt, num_samples=run.num_samples, seed=3)
        np.testing.assert_allclose(trajectory.thetas, single.thetas, rtol=0, atol=1e-13)
    again = descend("fig1", "tsam", 0.5, 0.005, 60, 0.2, 5.0, num_samples=20, seed=3)
    other = descend("fig1", "tsam", 0.5, 0.005, 60, 0.2, 5.0, num_samples=20, seed=4)
    np.testing.assert_array_equal(again.thetas, batch[5].thetas)
    assert not np.array_equal(other.thetas, again.thetas)


def test_sampled_gradient_converges_to_the_exact_gradient():
    rng = np.random.default_rng(0)
    eps = rng.uniform(-0.2, 0.2, 400_000)
    theta = np.array([0.52, 1.31, 0.52])
    tilts = np.array([0.0, 4.0, INF])
    sampled = _sampled_gradients(as_problem("fig1"), theta, tilts, eps)
    exact = [gradient("fig1", "tsam", th, 0.2, t) for th, t in zip(theta, tilts)]
    np.testing.assert_allclose(sampled[:2], exact[:2], atol=0.03)
    assert sampled[2] == pytest.approx(exact[2], abs=0.05)  # the worst sample tends to the SAM maximiser


def test_divergence_and_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="diverged"), np.errstate(over="ignore", invalid="ignore"):
        descend(lambda x: x**2, "erm", 1.0, 10.0, 2000, 0.1)
    with pytest.raises(ValueError, match="kind must be one of"):
        objective("fig1", "asam", 0.5, 0.2)
    with pytest.raises(ValueError, match="tilt must be given"):
        objective("fig1", "tsam", 0.5, 0.2)
    with pytest.raises(ValueError, match="tilt must be >= 0"):
        gradient("fig1", "tsam", 0.5, 0.2, -1.0)
    with pytest.raises(ValueError, match="rho must be a finite number >= 0, got -0.1"):
        objective("fig1", "sam", 0.5, -0.1)
    with pytest.raises(ValueError, match="measure must be one of"):
        objective("fig1", "tsam", 0.5, 0.2, 1.0, measure="laplace")
    with pytest.raises(ValueError, match="problem must be one of"):
        objective("fig9", "erm", 0.5, 0.2)
    with pytest.raises(ValueError, match="num_samples applies to kind 'sam' or 'tsam' only"):
        descend("fig1", "erm", 0.5, 0.01, 5, 0.2, num_samples=3)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        descend("fig1", "erm", 0.5, 0.0, 5, 0.2)
    with pytest.raises(ValueError, match="theta must be finite"):
        objective("fig1", "erm", [0.5, math.nan], 0.2)


# ----------------------------------------------------------------------------- the command


def test_toy_command_writes_figures_and_tables(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["toy", "fig1", "--out", str(out), "--steps", "40", "--tilts", "0,5", "--samples", "8"]) == 0
    assert main(["toy", "fig5", "--out", str(out), "--rhos", "0,0.3"]) == 0
    assert main(["toy", "fig6", "--out", str(out), "--rhos", "0.2", "--tilts", "0.01,1"]) == 0
    printed = capsys.readouterr().out
    assert "| objective | t | s | final θ |" in printed and "fig6: wrote" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["fig1.png", "fig1_sampled.png", "fig1_trajectories.csv", "fig1_trajectories.md", "fig1_minimisers.csv",
         "fig1_minimisers.md", "fig5.png", "fig5_minimisers.csv", "fig5_minimisers.md", "fig6.png",
         "fig6_minimisers.csv", "fig6_minimisers.md"]
    )  # and no temporary files left behind
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "fig1_trajectories.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["objective"], r["t"], r["s"]) for r in rows] == [
        ("ERM", "", ""), ("SAM", "", ""), ("SAM (ascent step)", "", ""), ("TSAM", "0", ""), ("TSAM", "5", ""),
        ("TSAM", "0", "8"), ("TSAM", "5", "8")]
    erm = descend("fig1", "erm", 0.5, 0.005, 40, 0.2)
    assert float(rows[0]["final θ"]) == erm.final_theta
    assert float(rows[0]["neighbourhood variance"]) == pytest.approx(erm.neighbourhood_variance, rel=1e-12)
    with open(out / "fig5_minimisers.csv") as handle:
        sweep = list(csv.DictReader(handle))
    assert [round(float(r["argmin θ*"]), 6) for r in sweep] == [1.0, 3.0]


def test_repeated_sampled_runs_are_summarised_per_tilt_and_sample_size(tmp_path):
    from tiltedsam.toy.figures import run_fig1

    report = run_fig1(tmp_path, steps=15, tilts=(0.0, 3.0), samples=(4,), seed=2, repeats=3)
    with open(tmp_path / "fig1_sampled_repeats.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["t"], r["s"], r["seeds"]) for r in rows] == [("0", "4", "2..4"), ("3", "4", "2..4")]
    variances = [descend("fig1", "tsam", 0.5, 0.005, 15, 0.2, 3.0, num_samples=4, seed=k).neighbourhood_variance
                 for k in (2, 3, 4)]
    assert float(rows[1]["median neighbourhood variance"]) == pytest.approx(float(np.median(variances)), rel=1e-12)
    assert float(rows[1]["max variance"]) == pytest.approx(max(variances), rel=1e-12)
    assert any("3 seeds" in title for title in report.tables)


def test_toy_command_rejects_bad_lists():
    with pytest.raises(SystemExit):
        main(["toy", "fig1", "--tilts", "1,-2"])
    with pytest.raises(SystemExit):
        main(["toy", "fig1", "--samples", "0"])
