r"""Pure functions shared by the optimizers and samplers: norms, SAM's ascent, parameter noise.

All of them act on lists of tensors (one per parameter) and treat the list as one flat vector: norms
are global over the whole model, as in SAM (Foret et al. 2021) and the TSAM authors' code.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

from . import sharded  # [sharded] DTensor (FSDP2) parameters: local shards, one reduction per global number

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
    if sharded.any_dtensor(present):  # [sharded]
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

    Drawn from ``generator`` (on its own device, then moved), so runs are reproducible.

    The clipping factor stays a tensor on the parameters' device (computed in float64, then applied
    in the parameters' dtype, as a Python float was before): no value is copied to the host, so on a
    GPU a draw does not wait for the device.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")
    device = generator.device
    if sharded.any_dtensor(params):  # [sharded] full-size draws (as unsharded), local shards kept
        noise, full_norm = sharded.normal_shards(params, generator)
    else:
        noise = [torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype).to(p.device) for p in params]
        full_norm = None
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
    """Inner product of two parameter-shaped lists read as flat vectors (``None`` counts as zero), in float64."""
    if sharded.any_dtensor(first) or sharded.any_dtensor(second):  # [sharded]
        return sharded.global_dot(first, second)
    total = 0.0
    for a, b in zip(first, second):
        if a is not None and b is not None:
            total += float(torch.sum(a * b, dtype=torch.float64))
    return total


@torch.no_grad()
def standard_normal_like(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """One ``N(0, I)`` tensor per parameter, drawn from ``generator`` on its device, then moved to the parameter's."""
    device = generator.device
    if sharded.any_dtensor(params):  # [sharded]
        return sharded.normal_shards(params, generator)[0]
    return [torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype).to(p.device) for p in params]
