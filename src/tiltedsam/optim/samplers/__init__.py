"""Perturbation samplers for TSAM (strategies): ``ascent`` (Algorithm 2 and its cheap variants, drawn
inline by TSAM), ``hmc`` (Eq. 11), ``naive`` (App. C.3, Eq. 75), the batched ascent, plus a name registry."""

from __future__ import annotations

from typing import Any

from .ascent import AscentSampler
from .base import DrawResult, Sampler, SamplingContext
from .hmc import HMCSampler
from .naive import NaiveSampler

__all__ = ["Sampler", "SamplingContext", "DrawResult", "AscentSampler", "HMCSampler", "NaiveSampler", "SAMPLERS", "make_sampler"]

#: name -> sampler class; every class takes keyword settings only.
SAMPLERS: dict[str, type[Sampler]] = {"ascent": AscentSampler, "hmc": HMCSampler, "naive": NaiveSampler}


def make_sampler(sampler: str | Sampler, **settings: Any) -> Sampler:
    """Build a sampler from its registry name and settings, or pass an instance through."""
    if isinstance(sampler, Sampler):
        if settings:
            raise ValueError(f"sampler settings {sorted(settings)} given together with a sampler instance")
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known samplers: {sorted(SAMPLERS)}")
    return SAMPLERS[sampler](**settings)
