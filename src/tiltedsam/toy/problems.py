r"""The paper's one-dimensional toy losses, and a wrapper that turns any 1-D function into one.

* ``"fig1"`` (Sec. 3.2, Fig. 1): :math:`L(\theta) = 2\sin(4\pi\theta)/(2\theta) + 0.005(\theta-1)^2`,
  studied on :math:`\theta \in (0.2, 2.5)`: many local minima, sharper towards small :math:`\theta`.
* ``"fig5"`` (App. A, Fig. 5 and 6): :math:`L(\theta) = |\theta-1| - 0.01` for :math:`\theta \le 2`,
  :math:`(\theta-3)^2` otherwise: a sharp minimum at 1 (value -0.01) and a flat one at 3 (value 0).
  ``L`` has a kink at 1 and a jump of +0.01 at 2 (0.99 from the left, 1 from the right).

A :class:`ToyProblem` carries the loss, its derivative and the points where either may be
discontinuous (``breakpoints``): the quadrature splits its panels there, so that piecewise-smooth
losses are integrated to machine precision, and the exact gradient adds the jump terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["ToyProblem", "PROBLEMS", "as_problem", "fig1_loss", "fig5_loss"]

ArrayFunction = Callable[[np.ndarray], np.ndarray]

#: step of the five-point central difference used when a problem has no derivative: its truncation
#: error is h^4 L^(5) / 30 and its rounding error about 1e-16 |L| / h, both ~1e-11 for the toy losses
_FD_STEP = 1e-4


@dataclass(frozen=True)
class ToyProblem:
    """A 1-D loss ``L`` with everything the exact objectives need.

    ``loss`` and ``derivative`` take and return float64 arrays of any shape (elementwise).
    ``domain`` is the interval plotted and searched for global minimisers; ``breakpoints`` are the
    points where ``L`` or ``L'`` may be discontinuous (kinks, jumps).
    """

    name: str
    loss: ArrayFunction
    derivative: ArrayFunction | None = None
    domain: tuple[float, float] = (-1.0, 1.0)
    breakpoints: tuple[float, ...] = field(default_factory=tuple)
    description: str = ""
    #: optional ``x -> (L(x), L'(x))`` sharing work between the two (used on the hot paths)
    value_and_derivative: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.domain
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"domain must be a finite interval (lo, hi) with lo < hi, got {self.domain!r}")
        if any(not math.isfinite(b) for b in self.breakpoints):
            raise ValueError(f"breakpoints must be finite numbers, got {self.breakpoints!r}")

    def __call__(self, theta: np.ndarray | float) -> np.ndarray:
        return self.value(theta)

    def value(self, theta: np.ndarray | float) -> np.ndarray:
        """``L(theta)`` elementwise, as float64."""
        x = np.asarray(theta, dtype=np.float64)
        return np.asarray(self.loss(x), dtype=np.float64).reshape(x.shape)

    def grad(self, theta: np.ndarray | float) -> np.ndarray:
        """``L'(theta)``: the given derivative, else a five-point central difference (error ~1e-10)."""
        x = np.asarray(theta, dtype=np.float64)
        if self.derivative is not None:
            return np.asarray(self.derivative(x), dtype=np.float64).reshape(x.shape)
        h = _FD_STEP * np.maximum(1.0, np.abs(x))
        return (8 * (self.value(x + h) - self.value(x - h)) - (self.value(x + 2 * h) - self.value(x - 2 * h))) / (12 * h)

    def value_and_grad(self, theta: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """``(L(theta), L'(theta))``, in one pass when the problem provides one."""
        if self.value_and_derivative is None:
            return self.value(theta), self.grad(theta)
        x = np.asarray(theta, dtype=np.float64)
        value, slope = self.value_and_derivative(x)
        return np.asarray(value, dtype=np.float64).reshape(x.shape), np.asarray(slope, dtype=np.float64).reshape(x.shape)

    def one_sided(self, point: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Left and right limits ``L(b-)``, ``L(b+)``, evaluated 1e-12 (relative) either side of ``b``."""
        b = np.asarray(point, dtype=np.float64)
        eta = 1e-12 * np.maximum(1.0, np.abs(b))
        return self.value(b - eta), self.value(b + eta)


def _fig1_parts(theta: np.ndarray, with_slope: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``sin(a x) / x`` and (optionally) its derivative, ``a = 4 pi``, sharing one sin and one cos.

    Near 0 the Taylor series ``a - a^3 x^2 / 6`` and ``-a^3 x / 3 + a^5 x^3 / 30`` replace the 0/0
    (both exact to ~1e-13 for ``|x| < 1e-4``).
    """
    a = 4 * np.pi
    small = np.abs(theta) < 1e-4
    has_small = bool(small.any())
    safe = np.where(small, 1.0, theta) if has_small else theta
    inverse = 1.0 / safe
    angle = a * safe
    ratio = np.sin(angle) * inverse
    slope = (a * np.cos(angle) - ratio) * inverse if with_slope else None
    if has_small:  # masking passes only when needed: this is the hot path of every toy computation
        ratio = np.where(small, a - a**3 * theta**2 / 6, ratio)
        if with_slope:
            slope = np.where(small, -(a**3) * theta / 3 + a**5 * theta**3 / 30, slope)
    return ratio, slope


def fig1_loss(theta: np.ndarray) -> np.ndarray:
    r""":math:`2\sin(4\pi\theta)/(2\theta) + 0.005(\theta-1)^2` (Sec. 3.2), finite at ``theta = 0``."""
    return _fig1_parts(theta, with_slope=False)[0] + 0.005 * (theta - 1) ** 2


def _fig1_derivative(theta: np.ndarray) -> np.ndarray:
    return _fig1_parts(theta)[1] + 0.01 * (theta - 1)


def _fig1_value_and_derivative(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ratio, slope = _fig1_parts(theta)
    return ratio + 0.005 * (theta - 1) ** 2, slope + 0.01 * (theta - 1)


def fig5_loss(theta: np.ndarray) -> np.ndarray:
    r""":math:`|\theta-1| - 0.01` for :math:`\theta \le 2`, :math:`(\theta-3)^2` otherwise (App. A)."""
    return np.where(theta <= 2, np.abs(theta - 1) - 0.01, (theta - 3) ** 2)


def _fig5_derivative(theta: np.ndarray) -> np.ndarray:
    return np.where(theta <= 2, np.sign(theta - 1), 2 * (theta - 3))


#: the paper's problems by name
PROBLEMS: dict[str, ToyProblem] = {
    "fig1": ToyProblem(
        name="fig1",
        loss=fig1_loss,
        derivative=_fig1_derivative,
        value_and_derivative=_fig1_value_and_derivative,
        domain=(0.2, 2.5),
        description="L(θ) = 2 sin(4πθ)/(2θ) + 0.005(θ−1)², θ ∈ (0.2, 2.5) (Sec. 3.2, Fig. 1)",
    ),
    "fig5": ToyProblem(
        name="fig5",
        loss=fig5_loss,
        derivative=_fig5_derivative,
        domain=(0.0, 4.0),
        breakpoints=(1.0, 2.0),
        description="L(θ) = |θ−1| − 0.01 for θ ≤ 2, (θ−3)² otherwise (App. A, Fig. 5 and 6)",
    ),
}


def _vectorised(function: Callable) -> ArrayFunction:
    """Call ``function`` on whole arrays if it returns a matching shape, else elementwise."""

    def elementwise(x: np.ndarray) -> np.ndarray:
        return np.vectorize(lambda v: float(function(float(v))), otypes=[np.float64])(x)

    def call(x: np.ndarray) -> np.ndarray:
        try:
            out = np.asarray(function(x), dtype=np.float64)
        except (TypeError, ValueError):
            return elementwise(x)
        if out.shape != x.shape:
            return elementwise(x) if out.size != x.size else out.reshape(x.shape)
        return out

    return call


def as_problem(
    problem: str | ToyProblem | Callable,
    *,
    derivative: Callable | None = None,
    domain: tuple[float, float] | None = None,
    breakpoints: tuple[float, ...] = (),
) -> ToyProblem:
    """Resolve ``problem``: a name in :data:`PROBLEMS`, a :class:`ToyProblem`, or a 1-D callable.

    A callable may take numpy arrays (preferred: fast) or plain floats (then it is called
    elementwise). Without ``derivative`` its derivative is a five-point central difference.
    ``domain`` (default ``(-1, 1)``) is where figures are drawn and minimisers are searched.
    """
    if isinstance(problem, ToyProblem):
        return problem
    if isinstance(problem, str):
        try:
            return PROBLEMS[problem]
        except KeyError:
            raise ValueError(f"problem must be one of {sorted(PROBLEMS)} or a callable, got {problem!r}") from None
    if callable(problem):
        return ToyProblem(
            name=getattr(problem, "__name__", "custom"),
            loss=_vectorised(problem),
            derivative=None if derivative is None else _vectorised(derivative),
            domain=(-1.0, 1.0) if domain is None else (float(domain[0]), float(domain[1])),
            breakpoints=tuple(float(b) for b in breakpoints),
            description="user-supplied loss",
        )
    raise ValueError(f"problem must be one of {sorted(PROBLEMS)}, a ToyProblem or a callable, got {problem!r}")
