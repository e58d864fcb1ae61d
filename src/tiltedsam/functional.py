r"""The layer below the optimizers and their samplers: parameter-vector operations and the one check
of a hyper-parameter.

The tensor functions treat a list of tensors (one per parameter) as one flat vector: norms are global
over the whole model, as in SAM (Foret et al. 2021) and the TSAM authors' code. Every copy, move and
restore of the parameters goes through here, so FSDP2-sharded parameters (``DTensor``) need one
dispatch to :mod:`tiltedsam.sharded`, after one type check of a list's first tensor.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from . import sharded

__all__ = ["global_norm", "global_dot", "ascent_step", "draw_noise", "standard_normal_like", "NOISE_KINDS",
           "NORM_EPS", "snapshot", "restore", "shift", "move", "unit_direction", "filter_norms",
           "scale_by_filter_norms_", "check_hyperparameter"]

NOISE_KINDS = ("gaussian", "uniform")
NoiseKind = Literal["gaussian", "uniform"]

#: Added to gradient norms before dividing, so a zero gradient gives a zero ascent (as in SAM's code).
NORM_EPS = 1e-12


def global_norm(tensors: Sequence[Tensor | None]) -> Tensor:
    """L2 norm of the concatenation of ``tensors`` (``None`` entries skipped), as a 0-dim tensor; over all
    ranks' shards for sharded tensors (one all-reduce)."""
    present = [t for t in tensors if t is not None]
    if not present:
        return torch.zeros(())
    if sharded.is_dtensor(present[0]):
        return sharded.global_norm(present)
    return torch.nn.utils.get_total_norm(present, norm_type=2.0)


@torch.no_grad()
def ascent_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    rho: float | Sequence[float],
    *,
    adaptive: bool | Sequence[bool] = False,
    adaptive_eta: float | Sequence[float] = 0.01,
) -> list[Tensor | None]:
    r"""Move ``params`` in place by SAM's normalised ascent and return the perturbation ``e``.

    .. math:: e_i = \rho_i\, \frac{T_i^2 g_i}{\lVert T g \rVert_2 + 10^{-12}}

    with ``T_i = I`` (SAM, Foret et al. 2021) or ``T_i = diag(|w_i| + eta_i)`` (ASAM, Kwon et al. 2021,
    ``adaptive=True``). For ``T = I`` this is ``rho g / ||g||``, the step of Algorithm 2 in the TSAM
    paper. ``rho``, ``adaptive`` and ``adaptive_eta`` may also be one value per parameter (SAM's
    per-param-group settings); the norm is always global over all parameters. Parameters without a
    gradient are not moved.
    """
    count = len(grads)
    rhos = [rho] * count if isinstance(rho, (int, float)) else list(rho)
    adaptives = [adaptive] * count if isinstance(adaptive, bool) else list(adaptive)
    etas = [adaptive_eta] * count if isinstance(adaptive_eta, (int, float)) else list(adaptive_eta)
    scales = [None if g is None or not a else p.abs().add(eta) for p, g, a, eta in zip(params, grads, adaptives, etas)]
    scaled = [g if s is None or g is None else s * g for s, g in zip(scales, grads)]
    denominator = global_norm(scaled) + NORM_EPS
    factors: dict[float, Tensor] = {}  # one division per distinct rho (one in total for plain SAM)
    perturbation: list[Tensor | None] = []
    for p, g, s, r in zip(params, grads, scales, rhos):
        if g is None:
            perturbation.append(None)
            continue
        if r not in factors:
            factors[r] = r / denominator
        factor = factors[r]
        e = g * factor.to(g.device, g.dtype) if s is None else (s * s * g) * factor.to(g.device, g.dtype)
        p.add_(e)
        perturbation.append(e)
    return perturbation


@torch.no_grad()
def draw_noise(
    params: Sequence[Tensor],
    kind: NoiseKind,
    radius: float,
    generator: torch.Generator,
    *,
    std: float = 1.0,
) -> list[Tensor]:
    r"""Draw one random perturbation of all parameters, measured in the global L2 norm.

    * ``"gaussian"``: ``z ~ N(0, std^2 I)``, then clipped to the ball: ``z * min(1, radius/||z||)``
      (the TSAM authors' noise; with millions of parameters ``||z||`` is about ``std*sqrt(d)``, so it
      usually lands on the sphere of radius ``radius``).
    * ``"uniform"``: uniform in the ball ``||z|| <= radius``: a uniform direction times
      ``radius * u^{1/d}`` with ``u ~ U(0, 1)`` and ``d`` the number of parameters.

    Drawn from ``generator`` (on its own device, then moved), so runs are reproducible. Sharded
    parameters get the same numbers as unsharded ones (each rank draws at full size and keeps its shard).
    The clipping factor stays a float64 tensor on the device: a draw never waits for the device.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")
    device = generator.device
    if sharded.is_sharded(params):  # full-size draws (as unsharded), local shards kept; norm of the full draw
        noise, full_norm = sharded.normal_shards(params, generator)
    else:
        noise, full_norm = standard_normal_like(params, generator), None
    if radius == 0 or not noise:
        return [torch.zeros_like(p) for p in params]
    norm = (global_norm(noise) if full_norm is None else full_norm).to(torch.float64)
    if kind == "gaussian":
        # std * min(1, radius / (std ||z|| + eps))
        # (a true division: `radius / tensor` would multiply by a rounded reciprocal)
        ball = torch.full((), radius, dtype=torch.float64, device=norm.device)
        scale = torch.div(ball, norm * std + NORM_EPS).clamp(max=1.0) * std
    else:
        # radius * u^(1/d) / (||z|| + eps), with u^(1/d) = exp(log(max(u, 1e-300)) / d)
        dim = sum(p.numel() for p in params)
        u = torch.rand((), generator=generator, device=device, dtype=torch.float64).to(norm.device)
        scale = radius * torch.exp(torch.log(u.clamp(min=1e-300)) / dim) / (norm + NORM_EPS)
    for z in noise:
        z.mul_(scale.to(z.device, z.dtype))
    return noise


def global_dot(first: Sequence[Tensor | None], second: Sequence[Tensor | None]) -> float:
    """Inner product of two parameter-shaped lists read as flat vectors (``None`` counts as zero), in float64;
    over all ranks' shards for sharded tensors (one all-reduce)."""
    if sharded.is_sharded(first):
        return sharded.global_dot(first, second)
    total = 0.0
    for a, b in zip(first, second):
        if a is not None and b is not None:
            total += float(torch.sum(a * b, dtype=torch.float64))
    return total


@torch.no_grad()
def standard_normal_like(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """One ``N(0, I)`` tensor per parameter, drawn from ``generator`` on its device, then moved to the parameter's
    (sharded parameters: drawn at full size, this rank's shard kept)."""
    if sharded.is_sharded(params):
        return sharded.normal_shards(params, generator)[0]
    device = generator.device
    return [torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype).to(p.device) for p in params]


def snapshot(params: Sequence[Tensor]) -> list[Tensor]:
    """A detached copy of every parameter (the point a step starts from); of the local shards only for
    sharded parameters (``1/N`` of a copy per rank)."""
    if sharded.is_sharded(params):
        return sharded.snapshot(params)
    return [p.detach().clone() for p in params]


@torch.no_grad()
def restore(params: Sequence[Tensor], saved: Sequence[Tensor]) -> None:
    """Copy ``saved`` back into ``params``: bit-exact, unlike subtracting the perturbation again (on the
    local shards for sharded parameters: ``_foreach_copy_`` has no DTensor rule)."""
    if sharded.is_sharded(params):
        sharded.restore(params, saved)
    elif params:
        torch._foreach_copy_(list(params), list(saved))


@torch.no_grad()
def shift(params: Sequence[Tensor], tensors: Sequence[Tensor]) -> None:
    """``p <- p + t`` for every parameter (one fused call; ``tensors`` on the parameters' devices; on the local
    shards for sharded parameters)."""
    if sharded.is_sharded(params):
        sharded.add_(params, tensors)
    elif params:
        torch._foreach_add_(list(params), list(tensors))


@torch.no_grad()
def move(params: Sequence[Tensor], direction: Sequence[Tensor | None], alpha: float = 1.0) -> None:
    """``p <- p + alpha * d`` for every parameter with a direction (``None``: not moved)."""
    for p, d in zip(params, direction):
        if d is not None:
            p.add_(d.to(p.device, p.dtype), alpha=alpha)


@torch.no_grad()
def unit_direction(grads: Sequence[Tensor | None]) -> tuple[list[Tensor | None], bool]:
    """``g / (||g|| + 1e-12)`` (the direction :func:`ascent_step` moves along) and whether ``||g||`` is finite."""
    norm = global_norm(grads)
    factor = 1.0 / (norm + NORM_EPS)
    unit = [None if g is None else g * factor.to(g.device, g.dtype) for g in grads]
    return unit, math.isfinite(float(norm))


@torch.no_grad()
def filter_norms(params: Sequence[Tensor]) -> list[Tensor]:
    r"""The L2 norm of every *filter*, shaped to broadcast against the parameter (against its local shard
    for a sharded parameter; filters split across ranks are summed with one all-reduce in total).

    A filter is one output unit (a slice along dimension 0) of a parameter with two or more
    dimensions: ``||w_{i,k}||`` over ``w_i[k]``, shaped ``(rows, 1, ..., 1)``; a vector or scalar is one
    filter, whose norm is a 0-dim tensor.
    """
    if sharded.is_sharded(params):
        return sharded.filter_norms(params)
    norms = []
    for p in params:
        if p.dim() >= 2:
            rows = torch.linalg.vector_norm(p.reshape(p.shape[0], -1), dim=1)
            norms.append(rows.reshape((-1,) + (1,) * (p.dim() - 1)))
        else:
            norms.append(torch.linalg.vector_norm(p))
    return norms


@torch.no_grad()
def scale_by_filter_norms_(tensors: Sequence[Tensor], params: Sequence[Tensor], scale: float) -> None:
    r"""``t_i <- scale * ||w_{i,k}|| * t_i`` in place, per filter ``k`` of parameter ``i`` (see
    :func:`filter_norms`): RSAM's filter-wise noise scale. Sharded tensors are scaled on their shards."""
    norms = filter_norms(params)
    targets = [sharded.local(t) for t in tensors] if sharded.is_sharded(tensors) else tensors
    for t, n in zip(targets, norms):
        t.mul_(n * scale)


def _is_number(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.dtype != torch.bool
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_hyperparameter(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_inf: bool = False,
    integer: bool = False,
    choices: Sequence[Any] | None = None,
) -> Any:
    """The one check of a hyper-parameter (optimizers, samplers, base optimizers' settings).

    * ``choices``: ``value`` must be one of them (returned unchanged); ``choices=(True, False)`` is a flag,
      which only a ``bool`` passes (``1`` is not ``True`` here).
    * ``integer=True``: an ``int`` (not a ``bool``) in ``[low, high]``, returned as ``int``.
    * otherwise: a real number (``bool`` is not; a one-element tensor is, as torch accepts tensor learning
      rates), not NaN, finite unless ``allow_inf``, in the range ``[low, high]`` (open ends with
      ``low_inclusive`` / ``high_inclusive`` set to False), returned as ``float``.

    A value of the wrong type raises ``TypeError`` (numbers) or ``ValueError`` (integers, choices), a value
    out of range ``ValueError``; every message names the parameter, the value and what is allowed.
    """
    if choices is not None:
        flag = set(choices) == {True, False}
        if (flag and not isinstance(value, bool)) or (not flag and value not in choices):
            allowed = "True or False" if flag else f"one of {tuple(choices)}"
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
        return value
    bounds = " and ".join(([f"{'>=' if low_inclusive else '>'} {low:g}"] if low > -math.inf else [])
                          + ([f"{'<=' if high_inclusive else '<'} {high:g}"] if high < math.inf else []))
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
            raise ValueError(f"{name} must be an integer {bounds}, got {value!r}".replace("integer ,", "integer,"))
        return int(value)
    if not _is_number(value):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    above = number >= low if low_inclusive else number > low
    below = number <= high if high_inclusive else number < high
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or not (above and below):
        kind = "a number (inf allowed)" if allow_inf else "a finite number"
        raise ValueError(f"{name} must be {kind}{' ' + bounds if bounds else ''}, got {value!r}")
    return number
