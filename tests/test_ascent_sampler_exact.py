"""The ascent, naive and batched samplers pinned by their contracts: defaults, the setting each error names,
the noise they draw (radius, spread, nothing at all for an empty ball), their cost, the lazy variant's
saved state, and the base class's config and repr."""

from __future__ import annotations

import math

import pytest
import torch

from tiltedsam.optim.samplers import AscentSampler, NaiveSampler, Sampler, SamplingContext
from tiltedsam.optim.samplers.batched import BatchedAscentSampler

ASCENT_DEFAULTS = {"noise": "gaussian", "noise_radius": 1.0, "noise_std": 1.0, "direction": "per_sample",
                   "ascent_fraction": 1.0, "refresh_every": 1}


def _norm(tensors) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def _context(params, rho: float, seed: int = 0) -> SamplingContext:
    return SamplingContext(params=params, origin=[p.detach().clone() for p in params], rho=rho, sample_tilt=0.0,
                           generator=torch.Generator().manual_seed(seed), loss_value=float)


# ---------------------------------------------------------------- ascent sampler: settings
def test_ascent_defaults_are_tsams_documented_ones() -> None:
    assert AscentSampler().config() == {"name": "ascent", **ASCENT_DEFAULTS}
    assert BatchedAscentSampler().config() == {"name": "ascent", **ASCENT_DEFAULTS}


def test_batched_sampler_keeps_its_noise_settings() -> None:
    sampler = BatchedAscentSampler(noise="uniform", noise_radius=0.3, noise_std=0.2)
    assert (sampler.noise, sampler.noise_radius, sampler.noise_std) == ("uniform", 0.3, 0.2)


@pytest.mark.parametrize("settings, name", [
    ({"noise": "laplace"}, "noise"), ({"noise_radius": -1.0}, "noise_radius"), ({"noise_std": -0.5}, "noise_std"),
    ({"direction": "sideways"}, "direction"), ({"ascent_fraction": 0.0}, "ascent_fraction"),
    ({"ascent_fraction": 1.5}, "ascent_fraction"), ({"refresh_every": 0}, "refresh_every"),
])
def test_ascent_bad_setting_message_starts_with_its_name(settings: dict, name: str) -> None:
    with pytest.raises(ValueError) as raised:
        AscentSampler(**settings)
    assert str(raised.value).startswith(f"{name} must be ")


def test_gaussian_noise_needs_a_positive_std_only_when_it_draws() -> None:
    for radius in (1.0, 0.5):
        with pytest.raises(ValueError, match="noise_std must be > 0"):
            AscentSampler(noise="gaussian", noise_std=0.0, noise_radius=radius)
    # no noise at all (radius 0), or uniform noise (no std involved): a zero std is harmless
    assert AscentSampler(noise="gaussian", noise_std=0.0, noise_radius=0.0).noise_std == 0.0
    assert AscentSampler(noise="uniform", noise_std=0.0, noise_radius=1.0).noise_std == 0.0


def test_direction_only_requests_use_the_ascent_fraction() -> None:
    sampler = AscentSampler(direction="shared", ascent_fraction=0.25)
    assert sampler.clean_request.batch_fraction == 0.25 and sampler.clean_request.ascent_only
    assert sampler.noise_request.batch_fraction == 0.25 and sampler.noise_request.ascent_only


def test_one_eager_draw_costs_two_evaluations_per_sample_or_one_when_shared() -> None:
    assert AscentSampler().evaluations_per_sample() == 2
    assert AscentSampler(direction="shared").evaluations_per_sample() == 1


# ---------------------------------------------------------------- ascent sampler: noise
def test_noise_of_radius_one_is_drawn_inside_the_unit_ball() -> None:
    params = [torch.zeros(40), torch.zeros(3, 4)]
    for noise in ("gaussian", "uniform"):
        delta = AscentSampler(noise=noise, noise_radius=1.0).draw_noise(params, torch.Generator().manual_seed(3))
        assert delta is not None and [d.shape for d in delta] == [p.shape for p in params]
        assert 0.5 < _norm(delta) <= 1.0 + 1e-6  # 52 coordinates: the draw sits near the sphere


def test_an_empty_noise_ball_draws_nothing() -> None:
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    assert AscentSampler(noise_radius=0.0).draw_noise([torch.zeros(5)], generator) is None
    assert torch.equal(generator.get_state(), before)


# ---------------------------------------------------------------- ascent sampler: lazy state
def test_a_fresh_lazy_sampler_has_no_directions_and_counts_from_zero() -> None:
    fresh = AscentSampler(refresh_every=3)
    assert fresh.state_dict() == {"steps_since_refresh": 0, "directions": None}
    assert fresh.refresh_due(2)
    assert AscentSampler().state_dict() == {}  # the eager sampler keeps nothing between steps


def test_lazy_state_loads_defaults_when_absent() -> None:
    sampler = AscentSampler(refresh_every=2)
    sampler.load_state_dict({"steps_since_refresh": 5, "directions": [[torch.ones(2)]]})
    sampler.load_state_dict({})  # e.g. the state of an eager run
    assert sampler.state_dict() == {"steps_since_refresh": 0, "directions": None}


def test_lazy_state_round_trips_a_parameter_without_gradient() -> None:
    kept = [[torch.tensor([0.6, 0.8]), None], [torch.tensor([1.0, 0.0]), None]]
    sampler = AscentSampler(refresh_every=2)
    sampler.end_step(True, kept)
    state = sampler.state_dict()
    assert state["steps_since_refresh"] == 1
    assert state["directions"][0][1] is None and torch.equal(state["directions"][1][0], kept[1][0])
    assert state["directions"][0][0] is not kept[0][0]  # a copy: later steps cannot change a saved state
    other = AscentSampler(refresh_every=2)
    other.load_state_dict(state)
    assert other.directions[1][1] is None and torch.equal(other.directions[0][0], kept[0][0])
    assert other.directions[0][0] is not state["directions"][0][0]
    assert not other.refresh_due(2)


def test_a_refresh_with_a_non_finite_direction_keeps_nothing() -> None:
    sampler = AscentSampler(refresh_every=4)
    sampler.end_step(True, [[torch.ones(2)], None])
    assert sampler.directions is None and sampler.refresh_due(2)


# ---------------------------------------------------------------- naive sampler
@pytest.mark.parametrize("settings, name", [
    ({"noise": "laplace"}, "noise"), ({"noise_std": 0.0}, "noise_std"), ({"radius": -1.0}, "radius"),
])
def test_naive_bad_setting_message_starts_with_its_name(settings: dict, name: str) -> None:
    with pytest.raises(ValueError) as raised:
        NaiveSampler(**settings)
    assert str(raised.value).startswith(f"{name} must be ")


def _naive_point(sampler: NaiveSampler, ctx: SamplingContext) -> torch.Tensor:
    program = sampler.draw(ctx)
    next(program)
    point = ctx.params[0].detach().clone()
    with pytest.raises(StopIteration):
        program.send(1.0)
    return point


def test_naive_radius_wins_over_rho() -> None:
    ctx = _context([torch.zeros(50)], rho=0.01)
    norm = float(_naive_point(NaiveSampler(radius=2.0), ctx).norm())
    assert 1.0 < norm <= 2.0 + 1e-6  # uniform in the ball of radius 2 in 50 dimensions: near its sphere


def test_naive_gaussian_noise_has_the_given_spread() -> None:
    ctx = _context([torch.zeros(50)], rho=10.0)
    norm = float(_naive_point(NaiveSampler(noise="gaussian", noise_std=1e-3), ctx).norm())
    assert 1e-3 < norm < 2e-2  # ~ std sqrt(d) = 7e-3, far inside the ball of radius 10: not clipped


def test_naive_empty_ball_evaluates_theta_and_draws_nothing() -> None:
    ctx = _context([torch.full((4,), 0.5)], rho=0.0)
    before = ctx.generator.get_state()
    assert torch.equal(_naive_point(NaiveSampler(), ctx), torch.full((4,), 0.5))
    assert torch.equal(ctx.generator.get_state(), before)


# ---------------------------------------------------------------- the base class
def test_base_config_and_repr() -> None:
    assert Sampler().config() == {"name": "base"}
    assert repr(Sampler()) == "Sampler()"
    assert repr(NaiveSampler(noise="gaussian", noise_std=2.0, radius=0.5)) == \
        "NaiveSampler(noise='gaussian', noise_std=2.0, radius=0.5)"
