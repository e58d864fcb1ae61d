r"""Pure functions shared by the optimizers and samplers: norms, SAM's ascent, parameter noise.

All of them act on lists of tensors (one per parameter) and treat the list as one flat vector: norms
are global over the whole model, as in SAM (Foret et al. 2021) and the TSAM authors' code.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

__all__ = ["global_norm", "global_dot", "ascent_step", "draw_noise", "standard_normal_like", "NOISE_KINDS"]

NOISE_KINDS = ("gaussian", "uniform")
NoiseKind = Literal["gaussian", "uniform"]

#: Added to gradient norms before dividing, so a zero gradient gives a zero ascent (as in SAM's code).
NORM_EPS = 1e-12


def global_norm(tensors: Sequence[Tensor | None]) -> Tensor:
    """L2 norm of the concatenation of ``tensors`` (``None`` entries skipped), as a 0-dim tensor."""
    present = [t for t in tensors if t is not None]
    if not present:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(present, norm_type=2.0)


@torch.no_grad()
def ascent_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    rho: float,
    *,
    adaptive: bool = False,
    adaptive_eta: float = 0.01,
) -> list[Tensor | None]:
    r"""Move ``params`` in place by SAM's normalised ascent and return the perturbation ``e``.

    .. math:: e = \rho\, \frac{T^2 g}{\lVert T g \rVert_2 + 10^{-12}}

    with ``T = I`` (SAM, Foret et al. 2021) or ``T = diag(|w| + eta)`` (ASAM, Kwon et al. 2021,
    ``adaptive=True``). For ``T = I`` this is ``rho g / ||g||``, the step of Algorithm 2 in the TSAM
    paper. Parameters without a gradient are not moved.
    """
    if adaptive:
        scales = [None if g is None else p.abs().add(adaptive_eta) for p, g in zip(params, grads)]
        scaled = [None if g is None else s * g for s, g in zip(scales, grads)]
    else:
        scales = [None] * len(grads)
        scaled = list(grads)
    factor = rho / (global_norm(scaled) + NORM_EPS)
    perturbation: list[Tensor | None] = []
    for p, g, s in zip(params, grads, scales):
        if g is None:
            perturbation.append(None)
            continue
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

    Drawn from ``generator`` (on its own device, then moved), so runs are reproducible.

    The clipping factor stays a tensor on the parameters' device (computed in float64, then applied
    in the parameters' dtype, as a Python float was before): no value is copied to the host, so on a
    GPU a draw does not wait for the device.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")
    device = generator.device
    noise = [torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype).to(p.device) for p in params]
    if radius == 0 or not noise:
        return [torch.zeros_like(p) for p in params]
    norm = global_norm(noise).to(torch.float64)
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
    """Inner product of two parameter-shaped lists read as flat vectors (``None`` counts as zero), in float64."""
    total = 0.0
    for a, b in zip(first, second):
        if a is not None and b is not None:
            total += float(torch.sum(a * b, dtype=torch.float64))
    return total


@torch.no_grad()
def standard_normal_like(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """One ``N(0, I)`` tensor per parameter, drawn from ``generator`` on its device, then moved to the parameter's."""
    device = generator.device
    return [torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype).to(p.device) for p in params]
