r"""Pure, numerically stable math of exponential tilting (the TSAM paper, Sec. 3, Def. 1-3, Eq. 3-4).

Everything here is a function of loss *values* (and, for the accumulator, gradients); nothing holds
optimizer state. Every tilt goes through a log-sum-exp shifted by the largest loss, so ``t`` may be
anything in ``[0, inf]``: ``t = 0`` is the plain mean, ``t = inf`` is the max, and ``t = 1e6`` with
losses of ``1e4`` neither overflows nor loses the small-``t`` limit.

Scalar statistics are computed in float64 and returned in the input's floating dtype.

Non-finite losses (NaN, +-inf) raise :class:`NonFiniteLossError` unless ``nonfinite="ignore"`` is
passed, in which case those entries get weight zero (and an all-non-finite input still raises).
"""

from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = [
    "NonFiniteLossError",
    "check_tilt",
    "tilted_mean",
    "tilted_weights",
    "tilted_log_weights",
    "tilted_stats",
    "TiltedStats",
    "effective_sample_size",
    "effective_sample_size_at_tilt",
    "tilt_for_ess",
    "largest_tilt_at_least",
    "TiltedGradientAccumulator",
    "AutoTilt",
    "DEFAULT_TARGET_ESS",
    "DEFAULT_MAX_TILT",
    "DEFAULT_TILT_SMOOTHING",
]

NonFinitePolicy = Literal["raise", "ignore"]


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss that enters a tilted average is NaN or infinite."""


def check_tilt(tilt: float, name: str = "tilt") -> float:
    """Return ``tilt`` as a float after checking ``tilt >= 0`` (``inf`` allowed, NaN not)."""
    if isinstance(tilt, Tensor):
        tilt = float(tilt)
    if isinstance(tilt, bool) or not isinstance(tilt, (int, float)):
        raise TypeError(f"{name} must be a real number >= 0 or float('inf'), got {tilt!r}")
    tilt = float(tilt)
    if math.isnan(tilt) or tilt < 0:
        raise ValueError(f"{name} must be >= 0 (or float('inf')), got {tilt!r}")
    return tilt


def _as_tensor(values: Tensor | Sequence[float]) -> Tensor:
    if not isinstance(values, Tensor):
        values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() == 0:
        values = values.reshape(1)
    if values.shape[-1] == 0:
        raise ValueError("need at least one loss value, got an empty input")
    if not values.is_floating_point():
        values = values.to(torch.float64)
    return values


def _finite_mask(values: Tensor, nonfinite: NonFinitePolicy) -> Tensor | None:
    """Return None if all finite; else a boolean mask of finite entries (or raise)."""
    if nonfinite not in ("raise", "ignore"):
        raise ValueError(f"nonfinite must be 'raise' or 'ignore', got {nonfinite!r}")
    finite = torch.isfinite(values.detach())
    if bool(finite.all()):
        return None
    if nonfinite == "raise":
        bad = (~finite).nonzero().flatten().tolist()[:10]
        raise NonFiniteLossError(
            f"non-finite loss values at positions {bad} (values {values.detach().flatten()[bad].tolist()}); "
            "pass nonfinite='ignore' to give them zero weight instead"
        )
    if not bool(finite.any(dim=-1).all()):
        raise NonFiniteLossError("every loss value is non-finite; nothing to average")
    return finite


def tilted_log_weights(
    losses: Tensor | Sequence[float], tilt: float, *, nonfinite: NonFinitePolicy = "raise"
) -> Tensor:
    r"""Log of the normalised tilted weights of Def. 1 (a log-softmax of ``t * L`` over the last dim).

    .. math:: \log w_j = t L_j - \log \sum_k e^{t L_k}

    ``t = 0`` gives ``-log n`` everywhere; ``t = inf`` puts equal mass on the entries equal to the max
    (``-inf`` elsewhere), the limit of the softmax.
    """
    tilt = check_tilt(tilt)
    values = _as_tensor(losses)
    out_dtype = values.dtype
    values = values.to(torch.float64)
    mask = _finite_mask(values, nonfinite)
    if mask is not None:
        values = values.masked_fill(~mask, -math.inf)
    if math.isinf(tilt):
        is_max = values == values.max(dim=-1, keepdim=True).values
        count = is_max.sum(dim=-1, keepdim=True).to(torch.float64)
        logw = torch.where(is_max, -torch.log(count), torch.full_like(values, -math.inf))
    elif tilt == 0.0:
        if mask is None:
            logw = torch.full_like(values, -math.log(values.shape[-1]))
        else:
            count = mask.sum(dim=-1, keepdim=True).to(torch.float64)
            logw = torch.where(mask, -torch.log(count), torch.full_like(values, -math.inf))
    else:
        scaled = values * tilt
        if mask is not None:
            scaled = scaled.masked_fill(~mask, -math.inf)
        logw = torch.log_softmax(scaled, dim=-1)
    return logw.to(out_dtype)


def tilted_weights(
    losses: Tensor | Sequence[float], tilt: float, *, nonfinite: NonFinitePolicy = "raise"
) -> Tensor:
    r"""Normalised t-tilted weights (Def. 1), estimated over the given samples.

    .. math:: w_j = \frac{e^{t L_j}}{\sum_k e^{t L_k}} = \operatorname{softmax}(t L)_j

    They sum to one over the last dimension (the paper's ``w^t`` is ``n`` times this, so that its
    expectation is one). ``t = 0`` is uniform; ``t = inf`` is uniform over the argmax set.
    """
    return tilted_log_weights(losses, tilt, nonfinite=nonfinite).exp()


def tilted_mean(
    losses: Tensor | Sequence[float], tilt: float, *, nonfinite: NonFinitePolicy = "raise"
) -> Tensor:
    r"""Monte-Carlo estimate of the TSAM objective (Eq. 3) over the last dimension.

    .. math:: \hat L^t = \frac1t \log \frac1n \sum_j e^{t L_j}

    with ``t = 0`` the mean and ``t = inf`` the max. Computed as ``c + log1p(mean(expm1(t (L - c)))) / t``
    with ``c = max L`` (no overflow for any ``t``, no cancellation for small ``t``); when ``t`` times the
    spread of the losses is below ``1e-8``, as ``mean + (t/2) var`` (Eq. 59), exact to double precision
    there. Its gradient is the tilted average of the per-sample gradients (Lemma 1, Eq. 4).
    """
    tilt = check_tilt(tilt)
    values = _as_tensor(losses)
    out_dtype = values.dtype
    values = values.to(torch.float64)
    mask = _finite_mask(values, nonfinite)
    if mask is not None:
        # non-finite entries get zero weight: replace them by a harmless value, then mask them out
        values = torch.where(mask, values, torch.zeros_like(values))
    count = values.shape[-1] if mask is None else mask.sum(dim=-1).to(torch.float64)

    def masked_mean(x: Tensor) -> Tensor:
        if mask is None:
            return x.mean(dim=-1)
        return torch.where(mask, x, torch.zeros_like(x)).sum(dim=-1) / count

    if tilt == 0.0:
        result = masked_mean(values)
    else:
        finite_values = values if mask is None else values.masked_fill(~mask, -math.inf)
        shift = finite_values.detach().max(dim=-1, keepdim=True).values
        if math.isinf(tilt):
            result = finite_values.max(dim=-1).values
        else:
            scaled = torch.clamp(tilt * (values - shift), max=0.0)  # <= 0 already; clamp guards rounding
            result = shift.squeeze(-1) + torch.log1p(masked_mean(torch.expm1(scaled))) / tilt
            # When t * (spread of L) is tiny, t * (L - c) can fall into the subnormal range and lose
            # all its digits; there the expansion mean + (t/2) var (Eq. 59) is exact to ~(t*spread)^2.
            low = finite_values.detach().masked_fill(~torch.isfinite(finite_values.detach()), math.inf)
            spread = shift.squeeze(-1) - low.min(dim=-1).values
            mean = masked_mean(values)
            expansion = mean + 0.5 * tilt * masked_mean((values - mean.unsqueeze(-1)) ** 2)
            result = torch.where(tilt * spread < 1e-8, expansion, result)
    return result.to(out_dtype)


class TiltedStats(NamedTuple):
    """t-weighted mean and variance of Def. 2, and the effective sample size of the weights."""

    mean: Tensor
    variance: Tensor
    effective_sample_size: Tensor


def tilted_stats(
    values: Tensor | Sequence[float],
    tilt: float,
    *,
    weights_from: Tensor | Sequence[float] | None = None,
    nonfinite: NonFinitePolicy = "raise",
) -> TiltedStats:
    r"""t-weighted mean and variance (Def. 2) of samples of ``X`` over the last dimension.

    .. math::
        \mu_t = \frac{\mathbb E[e^{tX} X]}{\mathbb E[e^{tX}]},\qquad
        \sigma^2_t = \frac{\mathbb E[e^{tX} X^2]}{\mathbb E[e^{tX}]} - \mu_t^2

    computed as ``sum_j w_j X_j`` and ``sum_j w_j (X_j - mu_t)^2`` with ``w = softmax(t X)`` (the
    centred form cannot go negative by cancellation). ``t = 0`` gives the ordinary mean and the
    population (``1/n``) variance; the t-sharpness of Def. 3 compares these variances. Pass
    ``weights_from`` to tilt by one quantity and average another.
    """
    x = _as_tensor(values)
    out_dtype = x.dtype
    x = x.to(torch.float64)
    logw = tilted_log_weights(x if weights_from is None else _as_tensor(weights_from), tilt, nonfinite=nonfinite)
    w = logw.to(torch.float64).exp()
    safe_x = torch.where(w > 0, x, torch.zeros_like(x))
    mean = (w * safe_x).sum(dim=-1)
    variance = (w * (safe_x - mean.unsqueeze(-1)) ** 2).sum(dim=-1)
    return TiltedStats(mean.to(out_dtype), variance.to(out_dtype), effective_sample_size(w).to(out_dtype))


def effective_sample_size(weights: Tensor | Sequence[float]) -> Tensor:
    r"""Kish's effective sample size of (possibly unnormalised, non-negative) weights.

    .. math:: \mathrm{ESS} = \frac{(\sum_j w_j)^2}{\sum_j w_j^2} \in [1, n]

    ``n`` for uniform weights (``t = 0``), ``1`` when one sample takes all the weight (``t = inf``).
    """
    w = _as_tensor(weights).to(torch.float64)
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    total = w.sum(dim=-1)
    if bool((total == 0).any()):
        raise ValueError("weights sum to zero; the effective sample size is undefined")
    return total**2 / (w**2).sum(dim=-1)


def _finite_losses(losses: Tensor | Sequence[float], nonfinite: NonFinitePolicy) -> list[float]:
    """The losses as a flat list of Python floats (float64), non-finite ones raised on or dropped."""
    values = _as_tensor(losses).detach()
    if values.dim() != 1:
        raise ValueError(f"expected a 1-D vector of losses, got shape {tuple(values.shape)}")
    mask = _finite_mask(values.to(torch.float64), nonfinite)
    if mask is not None:
        values = values[mask]
    return values.to(torch.float64).tolist()


def _log_ess(gaps: Sequence[float], tilt: float) -> float:
    r"""``log ESS`` of ``w_j = exp(tilt * gap_j)`` with every ``gap_j = L_j - max L <= 0``.

    ``log ESS = 2 log sum_j e^{tilt gap_j} - log sum_j e^{2 tilt gap_j}``: the largest term of each sum is
    ``e^0 = 1``, so neither sum overflows or underflows to zero for any finite ``tilt``.
    """
    if math.isinf(tilt):
        return math.log(sum(1 for g in gaps if g == 0.0))
    once = math.fsum(math.exp(tilt * g) for g in gaps)
    twice = math.fsum(math.exp(2.0 * tilt * g) for g in gaps)
    return 2.0 * math.log(once) - math.log(twice)


def effective_sample_size_at_tilt(
    losses: Tensor | Sequence[float], tilt: float, *, nonfinite: NonFinitePolicy = "raise"
) -> float:
    r"""ESS of the tilted weights ``w = softmax(tilt * L)`` of a loss vector, as a function of ``tilt``.

    .. math::
        \mathrm{ESS}(\tau) = \frac{(\sum_j e^{\tau L_j})^2}{\sum_j e^{2\tau L_j}}
        = \exp\big(2\,\mathrm{LSE}(\tau L) - \mathrm{LSE}(2\tau L)\big)

    (Kish's ESS of the weights of Eq. 4, by log-sum-exp of the losses shifted by their maximum).
    ``ESS(0) = n``; ``ESS(inf)`` is the number of losses tied at the maximum. It is non-increasing in
    ``tau`` (``d/dtau sum_j w_j^2 = 2 sum_j w_j^2 (L_j - sum_k w_k L_k) >= 0``), strictly unless all
    losses are tied.
    """
    tilt = check_tilt(tilt)
    values = _finite_losses(losses, nonfinite)
    top = max(values)
    return math.exp(_log_ess([v - top for v in values], tilt))


def tilt_for_ess(
    losses: Tensor | Sequence[float],
    target_ess: float,
    *,
    max_tilt: float,
    rel_tol: float = 1e-12,
    nonfinite: NonFinitePolicy = "raise",
) -> float:
    r"""The largest tilt whose weights keep an effective sample size of at least ``target_ess * n``.

    .. math:: \tau^\star = \sup\{\tau \in [0, \tau_{\max}] : \mathrm{ESS}(\tau) \ge \alpha n\}

    with ``ESS`` of :func:`effective_sample_size_at_tilt` (adaptive tempering of sequential Monte Carlo,
    Jasra et al. 2011, applied to the weights of Eq. 4), ``alpha = target_ess``, ``n`` the number of
    finite losses. ``ESS`` is continuous and non-increasing in ``tau``, so the answer is the cap when
    ``ESS(max_tilt) >= alpha n`` (tied losses, ``n = 1``, ``alpha <= 1/n``), else the one crossing on
    ``(0, max_tilt)``, bisected to relative precision ``rel_tol`` (``alpha = 1`` gives ``0``).
    For Gaussian losses of standard deviation ``sigma_L`` and large ``n`` it approaches
    ``sqrt(ln(1/alpha)) / sigma_L``: nearly tied losses ask for a large tilt, hence the cap. Only the
    gaps to the largest loss matter, so the result scales as ``1 / spread``.
    """
    alpha = float(target_ess)
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"target_ess must be a fraction in (0, 1], got {target_ess!r}")
    max_tilt = AutoTilt.check_cap(max_tilt)
    if not (rel_tol > 0):
        raise ValueError(f"rel_tol must be > 0, got {rel_tol!r}")
    values = _finite_losses(losses, nonfinite)
    top = max(values)
    gaps = [v - top for v in values]
    log_target = math.log(alpha * len(gaps))
    if alpha == 1.0 and _log_ess(gaps, max_tilt) < log_target:
        return 0.0  # ESS = n only with uniform weights; a bisection would stop at a rounding-sized tau
    return largest_tilt_at_least(lambda tau: _log_ess(gaps, tau), log_target, max_tilt, rel_tol)


def largest_tilt_at_least(
    log_ess: Callable[[float], float], log_target: float, max_tilt: float, rel_tol: float = 1e-12
) -> float:
    """``sup{tau in [0, max_tilt] : log_ess(tau) >= log_target}`` for a non-increasing ``log_ess``, by bisection.

    ``max_tilt`` if it qualifies, else the crossing to relative precision ``rel_tol`` (the returned ``tau``
    always satisfies ``log_ess(tau) >= log_target``). Shared by :func:`tilt_for_ess` and the toy.
    """
    if log_ess(max_tilt) >= log_target:
        return max_tilt
    low, high = 0.0, max_tilt  # invariant: ESS(low) >= target > ESS(high)
    for _ in range(400):
        if high - low <= rel_tol * high:
            break
        middle = 0.5 * (low + high)
        if log_ess(middle) >= log_target:
            low = middle
        else:
            high = middle
    return low


class TiltedGradientAccumulator:
    r"""Streaming tilted average of gradients: ``sum_j w_j g_j`` with ``w = softmax(tilt * L)``.

    Gradients arrive one sample at a time; only one running weighted sum is kept, so memory does not
    grow with ``s``. An online log-sum-exp: with ``a_j = tilt * L_j`` and ``m`` the largest ``a`` so far,

    .. math:: S = \sum_j e^{a_j - m},\qquad G = \sum_j e^{a_j - m} g_j,\qquad \text{result} = G / S

    and when a larger ``a`` arrives, ``S`` and ``G`` are rescaled by ``e^{m_{old} - m_{new}}``. The
    result equals the batch formula for any arrival order (up to float rounding). ``tilt = inf``
    keeps the gradient(s) of the largest loss (ties averaged); ``tilt = 0`` is the plain mean.

    In TSAM the tilt passed here is ``t - delta`` (the part of the tilt not already realised by the
    sampler, Algorithm 1).
    """

    def __init__(self, tilt: float, *, nonfinite: NonFinitePolicy = "raise") -> None:
        self.tilt = check_tilt(tilt)
        if nonfinite not in ("raise", "ignore"):
            raise ValueError(f"nonfinite must be 'raise' or 'ignore', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.losses: list[float] = []  # every loss offered, in arrival order (skipped ones included)
        self._sum: list[Tensor | None] | None = None  # G; None until a finite loss arrives
        self._shift = 0.0  # m: the largest tilted log-weight so far
        self._total = 0.0  # S = sum_j exp(a_j - m)

    def __len__(self) -> int:
        return len(self.losses)

    def _log_weight(self, loss: float) -> float:
        if math.isinf(self.tilt):
            return loss  # compared only for equality/order: the hard-max limit
        return self.tilt * loss

    def add(self, loss: float | Tensor, grads: Sequence[Tensor | None]) -> None:
        """Fold in one sample: its (scalar) loss and its gradients (``None`` entries count as zero)."""
        loss = float(loss)
        self.losses.append(loss)
        if not math.isfinite(loss):
            if self.nonfinite == "raise":
                raise NonFiniteLossError(
                    f"loss of sample {len(self.losses) - 1} is {loss}; the tilted average is undefined "
                    "(pass nonfinite='ignore' to skip such samples)"
                )
            return
        a = self._log_weight(loss)
        if self._sum is not None and len(grads) != len(self._sum):
            raise ValueError(f"expected {len(self._sum)} gradient tensors, got {len(grads)}")
        if self._sum is None or (math.isinf(self.tilt) and a > self._shift):  # first, or a new hard max
            self._sum = [None if g is None else g.detach().clone() for g in grads]
            self._shift, self._total = a, 1.0
            return
        if math.isinf(self.tilt):
            if a < self._shift:
                return
            weight = 1.0
        elif a > self._shift:
            rescale = math.exp(self._shift - a)
            for acc in self._sum:
                if acc is not None:
                    acc.mul_(rescale)
            self._total *= rescale
            self._shift = a
            weight = 1.0
        else:
            weight = math.exp(a - self._shift)
        self._total += weight
        for i, g in enumerate(grads):
            if g is None:
                continue
            if self._sum[i] is None:
                self._sum[i] = g.detach() * weight
            else:
                self._sum[i].add_(g.detach(), alpha=weight)

    @property
    def num_used(self) -> int:
        """Number of samples that entered the average (finite losses)."""
        return sum(math.isfinite(x) for x in self.losses)

    def result(self) -> list[Tensor | None]:
        """The normalised tilted average ``G / S``, one tensor per gradient slot (``None`` if never set).

        Finalises the accumulator: the running sums are divided in place, so call it once.
        """
        if self._sum is None:
            if self.losses:
                raise NonFiniteLossError(f"every loss was non-finite: {self.losses}")
            raise ValueError("no sample was added; nothing to average")
        if self._total != 1.0:  # one effective sample is returned exactly, without a division
            for g in self._sum:
                if g is not None:
                    g.div_(self._total)
            self._total = 1.0
        return list(self._sum)

    def weights(self) -> Tensor:
        """Normalised weights of the samples added so far (zero for skipped, non-finite ones)."""
        return tilted_weights(torch.tensor(self.losses, dtype=torch.float64), self.tilt, nonfinite="ignore")


#: default ``target_ess``: the weights keep half of the ``s`` samples' worth of information, the usual
#: set point of adaptive tempering in sequential Monte Carlo (Jasra et al. 2011; Beskos et al. 2016)
DEFAULT_TARGET_ESS = 0.5
#: default cap on the tilt chosen by ``tilt="auto"`` (tied losses would otherwise ask for ``inf``)
DEFAULT_MAX_TILT = 1000.0
#: default EMA factor of ``log`` (chosen tilt) across steps: a memory of about 10 steps
DEFAULT_TILT_SMOOTHING = 0.9
#: log of a chosen tilt is taken of at least this (a bisection result of exactly 0 needs alpha = 1)
_SMALLEST_TILT = 1e-12


class AutoTilt:
    r"""The ``tilt="auto"`` rule: the largest tilt keeping a target ESS, smoothed in log space across steps.

    Adaptive tempering (sequential Monte Carlo) applied to the weights of Eq. 4, *predictive* because a
    streaming accumulator needs its weights' tilt before the first gradient arrives:

    1. after step ``k``, :meth:`observe` bisects its losses for ``tau*_k = sup{tau in [0, cap] :
       ESS(softmax(tau L_k.)) >= alpha n}`` (:func:`tilt_for_ess`; tied losses give the cap); :meth:`fold`
       takes a ``tau*_k`` found otherwise (the toy's quadrature);
    2. ``m_k = beta m_{k-1} + (1 - beta) log tau*_k`` (``m_0 = log tau*_0``): the state ``log_ema``;
    3. step ``k + 1`` uses :meth:`next_tilt` ``= min(exp(m_k), cap)``, ``0`` (uniform) before any step.

    ``alpha = target_ess`` in ``(0, 1]``, ``beta = smoothing`` in ``[0, 1)``; ``cap`` is given per call, so a
    schedule may move it between steps.
    """

    def __init__(self, target_ess: float = DEFAULT_TARGET_ESS, smoothing: float = DEFAULT_TILT_SMOOTHING, *,
                 log_ema: float | None = None) -> None:
        for name, value, ok, allowed in (("target_ess", target_ess, lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
                                         ("tilt_smoothing", smoothing, lambda v: 0.0 <= v < 1.0, "in [0, 1)")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        self.target_ess, self.smoothing, self.log_ema = float(target_ess), float(smoothing), log_ema

    @staticmethod
    def check_cap(max_tilt: float) -> float:
        """``max_tilt``, checked: ``>= 0`` and finite (nearly tied losses would ask for an infinite tilt)."""
        max_tilt = check_tilt(max_tilt, "max_tilt")
        if math.isinf(max_tilt):
            raise ValueError("max_tilt must be finite (nearly tied losses would ask for an infinite tilt)")
        return max_tilt

    def next_tilt(self, cap: float) -> float:
        return 0.0 if self.log_ema is None else min(math.exp(self.log_ema), cap)

    def fold(self, chosen: float) -> None:
        log_chosen, beta = math.log(max(chosen, _SMALLEST_TILT)), self.smoothing
        self.log_ema = log_chosen if self.log_ema is None else beta * self.log_ema + (1.0 - beta) * log_chosen

    def observe(self, losses: Sequence[float], cap: float) -> float:
        """Bisect, fold and return ``tau*_k``; with no finite loss or ``cap = 0`` nothing is learnt: ``cap``."""
        finite = [x for x in losses if math.isfinite(x)]
        if not finite or cap == 0.0:
            return cap
        chosen = tilt_for_ess(finite, self.target_ess, max_tilt=cap)
        self.fold(chosen)
        return chosen
