"""Paired per-seed statistics for comparing optimizers.

Two optimizers run on the same seed see the same data order, label noise, initialisation and noise
stream, so their per-seed results are *paired*: the seed-to-seed spread that both share cancels in
the difference. Every comparison the project reports uses :func:`paired_difference` on those
differences instead of comparing two means ± std that overlap for reasons unrelated to the optimizer.

The interval is Student's t interval on the per-seed differences ``d_i = a_i - b_i``:

.. math:: \\bar d \\pm t_{1-(1-c)/2,\\,n-1}\\; s_d / \\sqrt n

which is exact when the differences are normal and is the usual choice at 3–10 seeds (a bootstrap
over so few seeds has far too few distinct resamples to be trusted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["PairedDifference", "paired_difference", "paired_by_seed"]


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the paired differences ``a - b`` with its two-sided confidence interval.

    ``low``/``high`` are ``None`` when the interval is undefined (fewer than two pairs).
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    std: float | None
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below zero (the gap is outside the noise)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def verdict(self) -> str:
        """One word for the interval: ``"better"``, ``"worse"``, ``"inside noise"`` or ``"n<2"``."""
        if self.low is None or self.high is None:
            return "n<2"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "inside noise"

    def text(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """E.g. ``"+1.40 [+0.20, +2.60]"`` (values multiplied by ``scale``; ``unit`` appended)."""
        mean = f"{scale * self.mean:+.{digits}f}{unit}"
        if self.low is None or self.high is None:
            return f"{mean} (n={self.n}, no interval)"
        return f"{mean} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}]"


def _t_quantile(probability: float, dof: int) -> float:
    from scipy.stats import t as student_t  # scipy ships with the harness extra

    return float(student_t.ppf(probability, dof))


def paired_difference(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Paired difference ``values[i] - reference[i]`` over seeds with a t-based ``confidence`` interval.

    Args:
        values: per-seed results of the optimizer under study.
        reference: per-seed results of the reference, in the same seed order.
        confidence: two-sided confidence level in (0, 1).

    Raises:
        ValueError: when the lengths differ, no pair is given, a value is not finite, or
            ``confidence`` is outside (0, 1).
    """
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if len(values) != len(reference):
        raise ValueError(f"paired values need the same seeds: got {len(values)} values and {len(reference)} references")
    if len(values) == 0:
        raise ValueError("paired_difference needs at least one pair, got none")
    diffs = [float(a) - float(b) for a, b in zip(values, reference)]
    if not all(math.isfinite(d) for d in diffs):
        raise ValueError(f"paired values must be finite, got differences {diffs}")
    n = len(diffs)
    mean = math.fsum(diffs) / n
    if n < 2:
        return PairedDifference(mean=mean, low=None, high=None, n=n, std=None, confidence=confidence)
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half_width = _t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return PairedDifference(mean=mean, low=mean - half_width, high=mean + half_width, n=n, std=std,
                            confidence=confidence)


def paired_by_seed(values: Mapping[int, float], reference: Mapping[int, float],
                   confidence: float = 0.95) -> PairedDifference:
    """:func:`paired_difference` over the seeds present in both mappings ``seed -> result``.

    Raises ``ValueError`` when the two share no seed.
    """
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        raise ValueError(f"no common seed to pair: {sorted(values)} vs {sorted(reference)}")
    return paired_difference([values[s] for s in seeds], [reference[s] for s in seeds], confidence)
