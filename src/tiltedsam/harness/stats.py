"""Paired per-seed statistics for comparing optimizers.

Two optimizers run on one seed share data order, label noise, initialisation and noise stream, so
their per-seed results are *paired* and the shared spread cancels in the difference. Every
comparison uses :func:`paired_difference`: Student's t interval on ``d_i = a_i - b_i``,

.. math:: \\bar d \\pm t_{1-(1-c)/2,\\,n-1}\\; s_d / \\sqrt n

(exact for normal differences; a bootstrap over 3–10 seeds has too few distinct resamples).
:func:`holm` adjusts the p-values of one document's comparisons (a "better"/"worse" claim needs a
Holm-adjusted p below ``alpha``); :func:`tost` claims "no difference larger than ``m``" (a margin
stated before the runs) when the ``1 - 2 alpha`` interval lies inside ``(-m, m)``;
:func:`minimal_detectable_effect` says how large an effect a null result could have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

__all__ = ["PairedDifference", "paired_difference", "paired_by_seed", "holm", "Equivalence", "tost",
           "minimal_detectable_effect", "required_pairs"]


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the paired differences ``a - b`` with its two-sided confidence interval (``low``/``high``
    ``None`` for fewer than two pairs)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    std: float | None
    confidence: float = 0.95
    #: seeds that only one side had and that the pairing therefore left out (see :func:`paired_by_seed`)
    dropped: tuple[int, ...] = ()

    @property
    def p_value(self) -> float | None:
        """Two-sided p-value of the paired t test of mean difference 0 (``None`` when ``n < 2``).

        ``p = 2 (1 - F_{n-1}(|d̄| / (s_d/√n)))``; 0 when all differences are equal and non-zero, 1 when
        they are all zero.
        """
        if self.std is None or self.n < 2:
            return None
        if self.std == 0.0:
            return 1.0 if self.mean == 0.0 else 0.0
        from scipy.stats import t as student_t

        statistic = abs(self.mean) / (self.std / math.sqrt(self.n))
        return float(2.0 * student_t.sf(statistic, self.n - 1))

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
        note = f" (seeds {list(self.dropped)} unpaired, left out)" if self.dropped else ""
        if self.low is None or self.high is None:
            return f"{mean} (n={self.n}, no interval){note}"
        return f"{mean} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}]{note}"


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
    """:func:`paired_difference` over the seeds in both mappings ``seed -> result``; the unpaired seeds
    are listed in ``dropped`` (and :meth:`~PairedDifference.text`). ``ValueError`` when none is shared."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        raise ValueError(f"no common seed to pair: {sorted(values)} vs {sorted(reference)}")
    dropped = tuple(sorted(set(values) ^ set(reference)))
    result = paired_difference([values[s] for s in seeds], [reference[s] for s in seeds], confidence)
    return replace(result, dropped=dropped)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the
    ``i``-th is ``max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting every hypothesis whose adjusted
    p-value is below ``alpha`` controls the family-wise error rate at ``alpha`` (Holm 1979).

    Raises ``ValueError`` for a value outside ``[0, 1]``.
    """
    values = [float(p) for p in p_values]
    for p in values:
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
    m = len(values)
    order = sorted(range(m), key=lambda i: values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class Equivalence:
    """Result of :func:`tost`: ``equivalent`` when both one-sided tests reject at ``alpha``."""

    mean: float
    low: float  # the 1 - 2 alpha interval: equivalence <=> (low, high) inside (-margin, margin)
    high: float
    margin: float
    p_value: float  # max of the two one-sided p-values
    n: int
    alpha: float = 0.05

    @property
    def equivalent(self) -> bool:
        return self.p_value < self.alpha


def tost(values: Sequence[float], reference: Sequence[float], margin: float, alpha: float = 0.05) -> Equivalence:
    """Two one-sided paired t tests of ``|mean(values - reference)| < margin`` (Schuirmann 1987).

    ``p = max(P(T_{n-1} >= (d̄ + m)/se), P(T_{n-1} <= (d̄ - m)/se))`` with ``se = s_d / √n``;
    equivalently, equivalence at level ``alpha`` holds exactly when the ``1 - 2 alpha`` t interval of
    the mean difference lies inside ``(-m, m)``. ``margin`` must be fixed before the data are seen.

    Raises ``ValueError`` when ``margin <= 0``, ``alpha`` is outside ``(0, 0.5)`` or fewer than two pairs.
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a positive finite number, got {margin!r}")
    if not (0.0 < alpha < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    diff = paired_difference(values, reference, confidence=1.0 - 2.0 * alpha)
    if diff.std is None or diff.low is None or diff.high is None:
        raise ValueError(f"an equivalence test needs at least two pairs, got {diff.n}")
    from scipy.stats import t as student_t

    if diff.std == 0.0:
        p = 0.0 if abs(diff.mean) < margin else 1.0
    else:
        se = diff.std / math.sqrt(diff.n)
        p_lower = float(student_t.sf((diff.mean + margin) / se, diff.n - 1))  # H0: d <= -m
        p_upper = float(student_t.cdf((diff.mean - margin) / se, diff.n - 1))  # H0: d >= +m
        p = max(p_lower, p_upper)
    return Equivalence(mean=diff.mean, low=diff.low, high=diff.high, margin=float(margin), p_value=p, n=diff.n,
                       alpha=alpha)


def _paired_power(effect: float, std: float, n: int, alpha: float) -> float:
    from scipy.stats import nct
    from scipy.stats import t as student_t

    dof = n - 1
    critical = float(student_t.ppf(1.0 - alpha / 2.0, dof))
    shift = effect / (std / math.sqrt(n))
    power = float(nct.sf(critical, dof, shift) + nct.cdf(-critical, dof, shift))
    return power if math.isfinite(power) else 1.0  # scipy's nct gives NaN far in the tail, where power is 1


def minimal_detectable_effect(std: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t test at level ``alpha`` detects with ``power``.

    Solves ``P(|T| > t_{1-alpha/2, n-1}) = power`` for ``delta``, where ``T`` is non-central t with
    ``n - 1`` degrees of freedom and non-centrality ``delta √n / s_d`` (exact, not the normal shortcut
    ``(z_{1-alpha/2} + z_power) s_d / √n``, which it approaches for large ``n``). ``std`` is the
    standard deviation of the per-seed differences, in the unit the result is wanted in.

    Raises ``ValueError`` when ``n < 2``, ``std < 0`` or a level is outside ``(0, 1)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"std must be a finite number >= 0, got {std!r}")
    if not (0.0 < alpha < 1.0) or not (0.0 < power < 1.0):
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha!r}, power={power!r}")
    if std == 0.0:
        return 0.0
    from scipy.optimize import brentq

    high = 4.0 * std / math.sqrt(n)  # above the normal shortcut (2.8 s_d/√n) except at very small n
    while _paired_power(high, std, n, alpha) < power:
        high *= 2.0
    return float(brentq(lambda e: _paired_power(e, std, n, alpha) - power, 0.0, high, xtol=1e-12 * std))


def required_pairs(std: float, effect: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 100_000) -> int:
    """Smallest ``n`` whose :func:`minimal_detectable_effect` is ``<= effect`` (for planning a study)."""
    if not (effect > 0):
        raise ValueError(f"effect must be > 0, got {effect!r}")
    n = 2
    while minimal_detectable_effect(std, n, alpha, power) > effect:
        n += 1
        if n > max_n:
            raise ValueError(f"more than {max_n} pairs needed for effect {effect} with std {std}")
    return n
