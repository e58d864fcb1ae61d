"""The wells toy: its Monte Carlo ground truth against the closed form, and a tiny end-to-end run."""

import math

import pytest
from scipy.optimize import brentq

from tiltedsam.toy.wells import WellsProblem, ground_truth, run_wells, wilson_interval, write_wells


def _closed_form_tilted_a(problem: WellsProblem, t: float) -> float:
    # d = 4, two sharp directions: u1^2 + u2^2 ~ Uniform(0, 1) for u uniform on S^3, so
    # L_A = r^2/2 (flat + (sharp - flat) U) and L^t = r^2 flat/2 + (1/t) log((e^{a t} - 1)/(a t)), a = r^2 (sharp - flat)/2
    base = problem.radius ** 2 * problem.flat / 2
    a = problem.radius ** 2 * (problem.sharp - problem.flat) / 2
    if t == 0:
        return base + a / 2
    return base + math.log(math.expm1(a * t) / (a * t)) / t


def test_ground_truth_matches_closed_form_and_flip():
    problem = WellsProblem()  # d = 4, two sharp directions
    truth = ground_truth(problem, [0.0, 2.0, 8.0], draws=100_000, seed=1)
    for t, value in zip(truth.tilts, truth.tilted_a):
        assert value == pytest.approx(_closed_form_tilted_a(problem, t), abs=5e-3)
    assert truth.tilted_b == pytest.approx([problem.radius ** 2 * problem.isotropic / 2] * 3)  # zero variance
    flip = brentq(lambda t: _closed_form_tilted_a(problem, t) - problem.radius ** 2 * problem.isotropic / 2, 1e-6, 100)
    assert truth.flip == pytest.approx(flip, rel=0.03)


def test_no_flip_when_isotropic_well_is_below_the_mean():
    truth = ground_truth(WellsProblem(isotropic=1.0), [0.0], draws=20_000)
    assert math.isnan(truth.flip)  # B is preferred at every t


@pytest.mark.parametrize("kwargs, match", [({"dim": 1}, "dim"), ({"num_sharp": 4}, "num_sharp"),
                                           ({"radius": -1.0}, "radius"), ({"distance": 1.0}, "distance")])
def test_bad_problem_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WellsProblem(**kwargs)


def test_wilson_interval_hand_value():
    # 3 of 10: centre (3 + z^2/2)/(10 + z^2), half-width z/(10 + z^2) sqrt(10*0.3*0.7 + z^2/4)
    z = 1.959963984540054
    centre, half = (3 + z * z / 2) / (10 + z * z), z / (10 + z * z) * math.sqrt(10 * 0.21 + z * z / 4)
    assert wilson_interval(3, 10) == pytest.approx((centre - half, centre + half), rel=1e-6)


def test_tiny_run_writes_figure_and_counts(tmp_path):
    result = run_wells(WellsProblem(), [0.0, 10.0], count=3, steps=5, naive_samples=4, truth_draws=5000,
                       optimizers=("erm", "tsam-alg2"))
    assert [(r["optimizer"], r["runs"]) for r in result.rows] == [("erm", 3), ("tsam-alg2", 3), ("tsam-alg2", 3)]
    assert all(0 <= r["in_a"] <= 3 and r["low"] <= r["fraction_a"] <= r["high"] for r in result.rows)
    assert result.rows[1]["mean_ess"] == pytest.approx(3.0)  # t = 0: uniform weights over s = 3
    write_wells(result, tmp_path)
    assert (tmp_path / "wells.png").stat().st_size > 0 and "flip" in (tmp_path / "wells.md").read_text()


@pytest.mark.parametrize("argv, match", [(["--dim", "1"], "dim"), (["--radius", "0"], "radius"),
                                         (["--starts", "0"], "--starts"), (["--tilts", "1,inf"], "finite")])
def test_cli_bad_input_is_one_error_line(argv, match, tmp_path):
    from tiltedsam.cli import main

    with pytest.raises(SystemExit, match=match) as error:
        main(["toy", "wells", "--out", str(tmp_path), *argv])
    assert str(error.value).startswith("error:") and not list(tmp_path.iterdir())  # nothing written


def test_cli_prints_flip_and_fractions(tmp_path, capsys):
    from tiltedsam.cli import main

    assert main(["toy", "wells", "--out", str(tmp_path), "--starts", "2", "--wells-steps", "3", "--naive-samples", "2",
                 "--tilts", "0,9"]) == 0
    printed = capsys.readouterr().out
    assert "flip t* = 4." in printed and "| tsam-alg2 | 9 | 2 |" in printed and "Wilson" in printed
    assert (tmp_path / "wells.png").exists()
