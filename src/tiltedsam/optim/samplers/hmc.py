r"""The exact sampler of Sec. 4.2 (Eq. 11): Hamiltonian Monte Carlo on ``p(eps) ~ exp(delta L(theta + eps))``.

Energy ``U(eps) = -delta L(theta + eps)``, kinetic energy ``||p||^2 / (2 sigma^2)``. One *transition*:

1. draw the momentum ``p_0 ~ N(0, sigma^2 I)`` (or ``p_0 = 0``);
2. run ``N`` integrator steps of size ``beta`` on the dynamics
   ``dp/dtau = delta grad L(theta + eps)``, ``deps/dtau = p / sigma^2``
   (``"euler"`` is Eq. 11 verbatim: ``p <- p + beta delta grad L; eps <- eps + beta p / sigma^2``;
   ``"leapfrog"`` splits the momentum update in two halves around the position update);
3. accept the end point with probability (Sec. 4.2)
   ``min{1, exp(delta L(theta+eps) - ||p||^2/2sigma^2) / exp(delta L(theta+eps_0) - ||p_0||^2/2sigma^2)}``,
   else go back to ``eps_0``.

A sample is ``num_transitions`` such transitions from a start ``eps_0`` drawn uniformly in the ball.
"""

from __future__ import annotations

import math
from typing import Any, Generator

import torch
from torch import Tensor

from ...functional import check_hyperparameter, draw_noise, global_dot, restore, shift, standard_normal_like
from ..base import Point, Request
from .base import DrawResult, Sampler, SamplingContext

__all__ = ["HMCSampler", "INTEGRATORS"]

INTEGRATORS = ("leapfrog", "euler")
_MOMENTUM_KINDS = ("gaussian", "zero")
_INIT_KINDS = ("uniform", "zero")
#: Safety cap on reflections within one position update (a grazing path along the sphere of a
#: d-dimensional ball makes about sqrt(d) of them per radius travelled; each costs a few float ops).
_MAX_REFLECTIONS = 10**6
_START = Request(Point.PERTURBED, name="hmc_start")


def _billiard_2d(position: list[float], velocity: list[float], momentum: list[float], radius: float) -> int:
    """Fly ``position`` for unit time at ``velocity`` inside the disc of ``radius``, reflecting specularly
    off its circle; ``velocity`` and ``momentum`` (parallel vectors) are reflected alike. In place.

    A start a rounding error outside the circle is first put on it (radially), so the path never
    starts with a spurious near-tangent reflection."""
    norm = math.hypot(position[0], position[1])
    if norm > radius:
        position[0], position[1] = position[0] * radius / norm, position[1] * radius / norm
    remaining = 1.0
    for reflections in range(_MAX_REFLECTIONS + 1):
        a = velocity[0] ** 2 + velocity[1] ** 2
        if a == 0.0:
            return reflections
        b = position[0] * velocity[0] + position[1] * velocity[1]
        c = position[0] ** 2 + position[1] ** 2 - radius * radius
        # first time tau > 0 on the circle (the position is inside, so c <= 0 up to rounding)
        tau = max((-b + math.sqrt(max(b * b - a * c, 0.0))) / a, 0.0)
        if tau >= remaining or reflections == _MAX_REFLECTIONS:
            position[0] += remaining * velocity[0]
            position[1] += remaining * velocity[1]
            return reflections
        position[0] += tau * velocity[0]
        position[1] += tau * velocity[1]
        norm = math.hypot(position[0], position[1])
        position[0], position[1] = position[0] * radius / norm, position[1] * radius / norm
        nx, ny = position[0] / radius, position[1] / radius
        for vector in (velocity, momentum):
            along = vector[0] * nx + vector[1] * ny
            vector[0] -= 2 * along * nx
            vector[1] -= 2 * along * ny
        remaining -= tau
    return _MAX_REFLECTIONS


@torch.no_grad()
def _drift(eps: list[Tensor], momentum: list[Tensor], scale: float, radius: float) -> int:
    r"""Move ``eps <- eps + scale * p`` inside the ball ``||eps|| <= radius``, reflecting off its sphere.

    At the sphere the momentum's normal component flips (``p <- p - 2 (p.n) n``, ``n = eps / radius``)
    and the move continues: reflective HMC (Afshar & Domke 2015), volume-preserving and reversible.
    The path stays in the plane spanned by ``eps`` and ``p``, so it is computed in 2-D coordinates of
    that plane and mapped back with two vector operations. Returns the number of reflections.
    """
    eps_sq = global_dot(eps, eps)
    cross = global_dot(eps, momentum)
    p_sq = global_dot(momentum, momentum)
    if p_sq == 0.0 or scale == 0.0:
        return 0
    eps_norm = math.sqrt(eps_sq)
    if eps_norm > 0.0:
        # basis: e1 = eps / |eps|, e2 = (p - (p.e1) e1) / |p_perp|
        along = cross / eps_norm
        perp = math.sqrt(max(p_sq - along * along, 0.0))
        if perp <= 1e-12 * math.sqrt(p_sq):
            perp = 0.0
        position, mom = [eps_norm, 0.0], [along, perp]
    else:
        # eps = 0: the path is the line through p; e1 = p / |p|
        along, perp = math.sqrt(p_sq), 0.0
        position, mom = [0.0, 0.0], [along, 0.0]
    velocity = [scale * mom[0], scale * mom[1]]
    reflections = _billiard_2d(position, velocity, mom, radius)
    # back to parameter space: x e1 + y e2 as a combination a eps + b p
    if eps_norm > 0.0 and perp > 0.0:
        def combination(x: float, y: float) -> tuple[float, float]:
            return x / eps_norm - y * along / (eps_norm * perp), y / perp
    elif eps_norm > 0.0:
        def combination(x: float, y: float) -> tuple[float, float]:
            return x / eps_norm, 0.0
    else:
        def combination(x: float, y: float) -> tuple[float, float]:
            return 0.0, x / along
    eps_a, eps_b = combination(*position)
    mom_a, mom_b = combination(*mom)
    old_eps = [e.clone() for e in eps]
    torch._foreach_mul_(eps, eps_a)
    torch._foreach_add_(eps, momentum, alpha=eps_b)
    torch._foreach_mul_(momentum, mom_b)
    torch._foreach_add_(momentum, old_eps, alpha=mom_a)
    return reflections


class HMCSampler(Sampler):
    r"""Hamiltonian Monte Carlo for ``p(eps) ~ exp(delta L(theta + eps))`` on ``||eps|| <= radius`` (Eq. 11).

    Per sample: ``eps_0`` uniform in the ball (``init="uniform"``; ``"zero"`` starts at theta), one
    evaluation there, then ``num_transitions`` HMC transitions of ``num_steps`` integrator steps
    each (see the module docstring), each step one evaluation. The loss and gradient returned are
    those of the point the chain ends on: on rejection the start point's, whose gradient is kept
    (one parameter-sized copy) so nothing is evaluated twice.

    **Cost:** ``1 + num_transitions * num_steps`` evaluations per sample (``2 s`` per TSAM step with
    the defaults, as Algorithm 2). Memory: ``eps``, the momentum and, with ``accept=True``, a copy of
    the start point and of its gradient.

    **Integrator.** ``"leapfrog"`` (default) costs the same evaluations as Eq. 11's ``"euler"`` and
    is reversible, which makes the Metropolis test exact; ``"euler"`` (Eq. 11 as printed) is not, so
    with ``accept=True`` its samples follow the target only up to an ``O(beta)`` error.

    **Ball constraint.** A position update that would cross the sphere ``||eps|| = radius`` is
    reflected off it (:func:`_drift`), which keeps the map volume-preserving and reversible: with
    ``accept=True`` and leapfrog the target restricted to the ball is exactly invariant.

    **Special cases.** ``accept=False`` accepts every candidate, as in the paper's main runs. With
    ``num_steps=1``, ``momentum="zero"`` and ``accept=False``, a sample is one gradient-ascent step
    from ``eps_0``: ``eps = eps_0 + c beta^2 delta / sigma^2 grad L(theta + eps_0)`` with ``c = 1``
    (Euler) or ``1/2`` (leapfrog), the update Algorithm 2 is derived from (Sec. 4.2).

    Args:
        num_steps: ``N``, integrator steps per transition (``>= 1``).
        step_size: ``beta > 0``. ``None`` (default) picks ``beta = sigma * radius / (N sqrt(d))``,
            ``d`` the number of parameters, so the free flight of a typical momentum over one
            transition is about one ball radius.
        momentum_std: ``sigma > 0``.
        accept: apply the Metropolis test (``True``, exact) or accept always (``False``, the
            paper's main setting).
        num_transitions: transitions per sample (``>= 1``); more transitions move the sample from
            the uniform start towards the target ("repeating the above ... gives a sample from the
            exact distribution", Sec. 4.2).
        integrator: ``"leapfrog"`` or ``"euler"``.
        momentum: ``"gaussian"`` (``N(0, sigma^2 I)``) or ``"zero"``.
        init: ``"uniform"`` (``eps_0`` uniform in the ball) or ``"zero"`` (``eps_0 = 0``).
        radius: radius of the ball; ``None`` uses TSAM's ``rho``.

    Needs a finite ``delta`` (TSAM's ``sample_tilt``): with ``tilt=inf`` pass a finite
    ``sample_tilt`` explicitly, otherwise the first step raises ``ValueError``.

    Diagnostics (in TSAM's ``last_step.extra``): ``hmc_accept_prob`` and ``hmc_accepted`` per
    transition, ``hmc_acceptance_rate`` over the step, ``hmc_reflections`` per transition.
    """

    name = "hmc"

    def __init__(
        self,
        num_steps: int = 1,
        step_size: float | None = None,
        momentum_std: float = 1.0,
        accept: bool = True,
        num_transitions: int = 1,
        integrator: str = "leapfrog",
        momentum: str = "gaussian",
        init: str = "uniform",
        radius: float | None = None,
    ) -> None:
        positive = {"low": 0.0, "low_inclusive": False}
        self.num_steps = check_hyperparameter("num_steps", num_steps, integer=True, low=1)
        self.step_size = None if step_size is None else check_hyperparameter("step_size", step_size, **positive)
        self.momentum_std = check_hyperparameter("momentum_std", momentum_std, **positive)
        self.accept = check_hyperparameter("accept", accept, choices=(True, False))
        self.num_transitions = check_hyperparameter("num_transitions", num_transitions, integer=True, low=1)
        self.integrator = check_hyperparameter("integrator", integrator, choices=INTEGRATORS)
        self.momentum = check_hyperparameter("momentum", momentum, choices=_MOMENTUM_KINDS)
        self.init = check_hyperparameter("init", init, choices=_INIT_KINDS)
        self.radius = None if radius is None else check_hyperparameter("radius", radius, low=0.0)

    def evaluations_per_sample(self) -> int:
        return 1 + self.num_transitions * self.num_steps

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_steps": self.num_steps, "step_size": self.step_size,
                "momentum_std": self.momentum_std, "accept": self.accept, "num_transitions": self.num_transitions,
                "integrator": self.integrator, "momentum": self.momentum, "init": self.init, "radius": self.radius}

    def resolved_step_size(self, ctx: SamplingContext) -> float:
        """``beta``: the explicit ``step_size``, or ``sigma * radius / (N sqrt(d))``."""
        if self.step_size is not None:
            return float(self.step_size)
        dim = max(1, sum(p.numel() for p in ctx.params))
        return self.momentum_std * self._radius(ctx) / (self.num_steps * math.sqrt(dim))

    def _radius(self, ctx: SamplingContext) -> float:
        return float(ctx.rho if self.radius is None else self.radius)

    def _initial_perturbation(self, ctx: SamplingContext, radius: float) -> list[Tensor]:
        """``eps_0``: uniform in the ball (or zero)."""
        if self.init == "zero" or radius == 0:
            return [torch.zeros_like(p) for p in ctx.params]
        return draw_noise(ctx.params, "uniform", radius, ctx.generator)

    @staticmethod
    @torch.no_grad()
    def _move_to(ctx: SamplingContext, eps: list[Tensor]) -> None:
        restore(ctx.params, ctx.origin)
        shift(ctx.params, eps)

    @staticmethod
    @torch.no_grad()
    def _kick(momentum: list[Tensor], grads: list[Tensor | None], amount: float) -> None:
        """``p <- p + amount * grad L`` (a missing gradient counts as zero)."""
        for p, g in zip(momentum, grads):
            if g is not None:
                p.add_(g, alpha=amount)

    def draw(self, ctx: SamplingContext) -> Generator[Request, Any, DrawResult]:
        delta = float(ctx.sample_tilt)
        if not math.isfinite(delta):
            raise ValueError(
                f"the hmc sampler needs a finite sample_tilt (delta), got {delta!r}: with tilt=inf pass an explicit "
                "finite sample_tilt to TSAM"
            )
        radius = self._radius(ctx)
        beta = self.resolved_step_size(ctx)
        sigma2 = self.momentum_std**2
        leapfrog = self.integrator == "leapfrog"
        first_kick = 0.5 if leapfrog else 1.0

        eps = self._initial_perturbation(ctx, radius)
        self._move_to(ctx, eps)
        loss = ctx.loss_value((yield _START))
        grads = ctx.grads()
        for transition in range(self.num_transitions):
            start_loss = loss
            if self.accept:  # kept to go back to on rejection, without evaluating again
                start_eps = [e.clone() for e in eps]
                start_grads = [None if g is None else g.detach().clone() for g in grads]
            if self.momentum == "gaussian":
                momentum = standard_normal_like(ctx.params, ctx.generator)
                torch._foreach_mul_(momentum, self.momentum_std)
            else:
                momentum = [torch.zeros_like(p) for p in ctx.params]
            start_kinetic = global_dot(momentum, momentum) / (2 * sigma2)
            reflections = 0
            for step in range(self.num_steps):
                self._kick(momentum, grads, first_kick * beta * delta)
                if radius > 0:
                    reflections += _drift(eps, momentum, beta / sigma2, radius)
                self._move_to(ctx, eps)
                loss = ctx.loss_value((yield Request(Point.PERTURBED, name=f"hmc_{transition}_{step}")))
                grads = ctx.grads()
                if leapfrog:
                    self._kick(momentum, grads, 0.5 * beta * delta)
            kinetic = global_dot(momentum, momentum) / (2 * sigma2)
            log_ratio = delta * (loss - start_loss) - (kinetic - start_kinetic)
            accept_prob = math.exp(min(0.0, log_ratio)) if math.isfinite(log_ratio) else 0.0
            if self.accept:
                u = float(torch.rand((), generator=ctx.generator, device=ctx.generator.device, dtype=torch.float64))
                accepted = math.isfinite(loss) and u < accept_prob
                if not accepted:
                    eps, grads, loss = start_eps, start_grads, start_loss
                    self._move_to(ctx, eps)  # the parameters end on the returned point
            else:
                accepted = True
            ctx.record("hmc_accept_prob", accept_prob)
            ctx.record("hmc_accepted", accepted)
            ctx.record("hmc_reflections", reflections)
        decisions = ctx.diagnostics["hmc_accepted"]
        ctx.diagnostics["hmc_acceptance_rate"] = sum(decisions) / len(decisions)  # type: ignore[assignment]
        return loss, grads
