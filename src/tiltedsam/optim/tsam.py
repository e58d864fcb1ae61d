"""Tilted SAM (TSAM): Algorithm 1 of the paper, with a pluggable perturbation sampler."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Generator

import torch
from torch import nn
from torch.optim import Optimizer

from ..samplers import Sampler, SamplingContext, make_sampler
from ..samplers.base import evaluation_count
from ..tilt import TiltedGradientAccumulator, check_tilt, effective_sample_size, tilt_for_ess, tilted_mean
from .base import PerturbationOptimizer, StepDiagnostics

__all__ = ["TSAM", "build_sampler", "AUTO_TILT", "DEFAULT_TARGET_ESS", "DEFAULT_MAX_TILT", "DEFAULT_TILT_SMOOTHING"]

#: the value of ``tilt`` that switches on the adaptive (target-ESS) rule
AUTO_TILT = "auto"
#: default ``target_ess``: the weights keep half of the ``s`` samples' worth of information, the usual
#: set point of adaptive tempering in sequential Monte Carlo (Jasra et al. 2011; Beskos et al. 2016)
DEFAULT_TARGET_ESS = 0.5
#: default cap on the tilt ``t`` chosen by ``tilt="auto"`` (tied losses would otherwise ask for ``inf``)
DEFAULT_MAX_TILT = 1000.0
#: default EMA factor of ``log`` (aggregation tilt) across steps: a memory of about 10 steps
DEFAULT_TILT_SMOOTHING = 0.9

#: TSAM's own keyword arguments that configure the ``"ascent"`` sampler, with their defaults
ASCENT_SETTINGS = {"noise": "gaussian", "noise_radius": 1.0, "noise_std": 1.0, "ascent_direction": "per_sample",
                   "ascent_fraction": 1.0, "refresh_every": 1}


def build_sampler(sampler: str | Sampler = "ascent", sampler_options: dict[str, Any] | None = None,
                  **ascent: Any) -> Sampler:
    """The sampler TSAM builds from its arguments (also used by the registry to count evaluations).

    ``ascent`` holds TSAM's top-level ascent settings (:data:`ASCENT_SETTINGS`); they configure the
    ``"ascent"`` sampler. The cheap-variant settings (``ascent_direction``, ``ascent_fraction``,
    ``refresh_every``) are rejected with another sampler when they differ from their defaults."""
    unknown = set(ascent) - set(ASCENT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown TSAM settings {sorted(unknown)}")
    settings = {**ASCENT_SETTINGS, **ascent}
    if sampler == "ascent":
        return make_sampler("ascent", noise=settings["noise"], noise_radius=settings["noise_radius"],
                            noise_std=settings["noise_std"], direction=settings["ascent_direction"],
                            ascent_fraction=settings["ascent_fraction"], refresh_every=settings["refresh_every"],
                            **(sampler_options or {}))
    for key in ("ascent_direction", "ascent_fraction", "refresh_every"):
        if settings[key] != ASCENT_SETTINGS[key]:
            name = sampler.name if isinstance(sampler, Sampler) else sampler
            raise ValueError(f"{key}={settings[key]!r} applies to the 'ascent' sampler only, got sampler={name!r}")
    return make_sampler(sampler, **(sampler_options or {}))


class TSAM(PerturbationOptimizer):
    r"""Tilted Sharpness-Aware Minimization (Algorithm 1, with the sampler of Algorithm 2 by default).

    TSAM minimises the tilted objective (Eq. 3)

    .. math:: L^t(\theta) = \frac1t \log \mathbb E_{\epsilon\sim\mu}\big[e^{t L(\theta+\epsilon)}\big]

    whose gradient is the tilted average of perturbed gradients (Eq. 4). One step:

    1. draw ``s = num_samples`` perturbations ``eps_j`` with the sampler (targeting
       ``p(eps) ~ exp(delta L(theta + eps))``, ``delta = sample_tilt``), evaluating the loss ``L_j``
       and gradient ``g_j`` at each ``theta + eps_j``;
    2. combine them with weights ``w_j ~ exp((t - delta) L_j)`` in a streaming log-sum-exp (memory
       does not grow with ``s``): ``g = sum_j w_j g_j / sum_j w_j``;
    3. restore ``theta`` bit-exactly, write ``g`` to ``.grad`` and let the base optimizer step.

    With the default ``"ascent"`` sampler (Algorithm 2) each sample costs two evaluations (at
    ``theta + delta_j`` and at ``theta + eps_j``), so :meth:`step` calls the closure ``2 s`` times.
    Cheaper ways to draw the samples (``ascent_direction="shared"``: ``s + 1``; ``ascent_fraction=f``:
    ``s (1 + f)``; ``refresh_every=k``: ``s (1 + 1/k)`` on average) are documented on
    :class:`~tiltedsam.samplers.AscentSampler`; :attr:`grad_evals_per_step` reports their cost.
    ``tilt = 0`` weights the samples uniformly; ``tilt = inf`` keeps the gradient of the largest loss
    (whatever ``sample_tilt``). With ``num_samples=1, noise_radius=0`` the update is exactly SAM's.

    Args:
        params: parameters or groups.
        base_optimizer: base optimizer class (default ``torch.optim.SGD``); ``**base_kwargs`` go to it.
        tilt: ``t >= 0``, ``inf``, or ``"auto"`` (chosen every step by a target effective sample size; below).
        num_samples: ``s >= 1`` perturbations per step.
        rho: ascent step size (radius of the SAM-style ascent), ``>= 0``.
        noise: ``"gaussian"`` (``N(0, noise_std^2 I)`` clipped to global L2 norm ``noise_radius``, as in
            the authors' code) or ``"uniform"`` (uniform in the global-L2 ball of radius ``noise_radius``).
        noise_radius: radius of the noise ball (global L2 norm over all parameters), ``>= 0``.
        noise_std: standard deviation of the Gaussian noise before clipping.
        ascent_direction: ``"per_sample"`` (Algorithm 2) or ``"shared"`` (one ascent gradient at ``theta``).
        ascent_fraction: fraction ``f`` of the mini-batch used by the direction-only evaluations; the
            closure receives the :class:`~tiltedsam.optim.base.Evaluation` (``evaluation.batch(x, y)``).
        refresh_every: recompute the ascent directions every ``k`` steps, reuse them in between.
        sample_tilt: ``delta`` with ``0 <= delta <= tilt``; ``None`` means ``tilt / 2`` (the paper's
            choice, App. C.1); ``0`` weights by ``exp(t L_j)``, as the authors' published code does.
        sampler: ``"ascent"`` (Algorithm 2), another registered name, or a :class:`Sampler`.
        sampler_options: settings for a sampler given by name (the noise settings above apply to
            ``"ascent"``).
        nonfinite: ``"raise"`` (default) raises :class:`~tiltedsam.tilt.NonFiniteLossError` when a
            sample's loss is NaN/inf (parameters are restored first, no step is taken); ``"ignore"``
            gives such samples zero weight (the step still fails if all are non-finite).
        model: optional module whose BatchNorm statistics then move only in the first evaluation.
        seed: seed of the noise generator.
        parallel_samples: EXPERIMENTAL (``"ascent"`` sampler, needs ``model=``): enables
            :meth:`step_batched`, which evaluates the ``s`` samples in one ``torch.func.vmap`` pass per
            stage (:mod:`tiltedsam.samplers.batched`). ``step``/``manual_step`` still evaluate in a loop.
        target_ess: with ``tilt="auto"``: the target ESS as a fraction ``alpha`` of ``s``, in ``(0, 1]``.
        max_tilt: with ``tilt="auto"``: the cap on ``t`` (finite, ``>= sample_tilt``).
        tilt_smoothing: with ``tilt="auto"``: the EMA factor ``beta`` in ``[0, 1)`` of ``log tau`` across steps.

    **tilt="auto"** (issue 12; the adaptive tempering of sequential Monte Carlo). The rule sets the
    *aggregation* tilt ``tau = t - delta`` (the one whose weights ``exp(tau L_j)`` combine the gradients,
    and whose ESS it controls); ``t`` follows as ``tau + delta``, i.e. ``t = 2 tau`` with the default
    ``sample_tilt=None`` (``delta = t/2``), ``t = tau + delta`` with an explicit ``delta``, ``t = tau`` for a
    sampler that draws from ``mu`` (``"naive"``). The estimator is *predictive*, so memory stays flat
    in ``s`` (the streaming accumulator needs its weights' tilt before the first gradient arrives):

    1. after step ``k`` (its ``s`` losses ``L_kj`` known; under DDP these are the all-reduced, global
       losses, so every rank computes the same numbers), bisect for
       ``tau*_k = sup{tau in [0, tau_max] : ESS(softmax(tau L_k.)) >= alpha s}``
       (:func:`~tiltedsam.tilt.tilt_for_ess`; ``tau_max = max_tilt - delta``; tied losses give ``tau_max``);
    2. smooth in log space: ``m_k = beta m_{k-1} + (1 - beta) log tau*_k`` (``m_0 = log tau*_0``);
    3. step ``k + 1`` weights its samples with ``tau_{k+1} = min(exp(m_k), tau_max)``.

    The very first step (no losses seen yet) uses ``tau = 0``: uniform weights. The realised ESS of each
    step (in :attr:`last_step`) therefore tracks ``alpha s`` only as well as consecutive mini-batches'
    loss spreads agree. :attr:`last_step` ``.extra`` holds the ``tilt`` and ``aggregation_tilt`` used by
    the step and ``auto_tilt``, the step's own bisection result ``tau*_k``. The state (``m_k``) is saved
    in :meth:`state_dict`. A :class:`~tiltedsam.optim.schedules.TiltScheduler` on an auto TSAM schedules
    the cap ``max_tilt`` (see there). Reading :attr:`tilt` gives the ``t`` the next step will use;
    assigning a number switches the rule off, assigning ``"auto"`` back on.

    After each step, :attr:`last_step` holds the per-sample losses, weights and effective sample size.
    """

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        tilt: float = 20.0,
        num_samples: int = 3,
        rho: float = 0.05,
        noise: str = "gaussian",
        noise_radius: float = 1.0,
        noise_std: float = 1.0,
        ascent_direction: str = "per_sample",
        ascent_fraction: float = 1.0,
        refresh_every: int = 1,
        sample_tilt: float | None = None,
        sampler: str | Sampler = "ascent",
        sampler_options: dict[str, Any] | None = None,
        nonfinite: str = "raise",
        model: nn.Module | None = None,
        seed: int | None = None,
        parallel_samples: bool = False,
        target_ess: float = DEFAULT_TARGET_ESS,
        max_tilt: float = DEFAULT_MAX_TILT,
        tilt_smoothing: float = DEFAULT_TILT_SMOOTHING,
        **base_kwargs: Any,
    ) -> None:
        auto = tilt == AUTO_TILT
        target_ess, max_tilt, tilt_smoothing = _check_auto_settings(target_ess, max_tilt, tilt_smoothing)
        tilt = max_tilt if auto else check_tilt(tilt, "tilt")  # the auto rule's t never exceeds the cap
        if auto and sample_tilt is not None and check_tilt(sample_tilt, "sample_tilt") > max_tilt:
            raise ValueError(f"sample_tilt={sample_tilt!r} exceeds max_tilt={max_tilt} (tilt='auto' keeps "
                             "sample_tilt <= t <= max_tilt)")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        rho = self._check_nonnegative("rho", rho)
        if sample_tilt is not None:
            sample_tilt = check_tilt(sample_tilt, "sample_tilt")
            if sample_tilt > tilt:
                raise ValueError(f"sample_tilt must satisfy 0 <= sample_tilt <= tilt={tilt}, got {sample_tilt!r}")
        if nonfinite not in ("raise", "ignore"):
            raise ValueError(f"nonfinite must be 'raise' or 'ignore', got {nonfinite!r}")
        if not isinstance(parallel_samples, bool):
            raise ValueError(f"parallel_samples must be True or False, got {parallel_samples!r}")
        if parallel_samples and (sampler != "ascent" or model is None):
            raise ValueError(f"parallel_samples=True needs sampler='ascent' and model=; got sampler={sampler!r}, "
                             f"model={type(model).__name__}")
        if parallel_samples and (ascent_direction, ascent_fraction, refresh_every) != ("per_sample", 1.0, 1):
            raise ValueError("parallel_samples=True batches Algorithm 2's per-sample ascent only; got "
                             f"ascent_direction={ascent_direction!r}, ascent_fraction={ascent_fraction!r}, "
                             f"refresh_every={refresh_every!r}")
        if parallel_samples:
            from ..samplers.batched import BatchedAscentSampler

            self.sampler = BatchedAscentSampler(noise=noise, noise_radius=noise_radius, noise_std=noise_std,
                                                **(sampler_options or {}))
        else:
            self.sampler = build_sampler(sampler, sampler_options, noise=noise, noise_radius=noise_radius,
                                         noise_std=noise_std, ascent_direction=ascent_direction,
                                         ascent_fraction=ascent_fraction, refresh_every=refresh_every)
        if not self.sampler.targets_tilted_density and sample_tilt not in (None, 0.0):
            raise ValueError(
                f"sample_tilt={sample_tilt!r} given, but the {self.sampler.name!r} sampler draws eps from mu, not from "
                "exp(delta L): its samples are weighted by exp(t L) (delta = 0, Eq. 75); leave sample_tilt unset or 0"
            )
        hyper = {
            "tilt": tilt,
            "num_samples": num_samples,
            "rho": rho,
            "sample_tilt": sample_tilt,
            "nonfinite": nonfinite,
            "sampler": self.sampler.config(),
            "target_ess": target_ess,
            "max_tilt": max_tilt,
            "tilt_smoothing": tilt_smoothing,
        }
        if auto:
            hyper["tilt"] = AUTO_TILT
        #: the auto rule's smoothed log aggregation tilt ``m_k`` (None: no step seen yet -> tau = 0)
        self._log_tilt_ema: float | None = None
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, nonfinite=nonfinite, **base_kwargs)

    #: a sample with a non-finite loss can get weight zero (the others still estimate the tilted mean)
    nonfinite_policies = ("raise", "ignore")

    def _describe_evaluation(self) -> str:
        return f"{super()._describe_evaluation()} of sample {getattr(self, '_sample_index', 0)}"

    # ------------------------------------------------------------------ the adaptive tilt
    @property
    def auto_tilt(self) -> bool:
        """Whether ``t`` is chosen by the target-ESS rule (``tilt="auto"``)."""
        return self.hyperparameters["tilt"] == AUTO_TILT

    @property
    def target_ess(self) -> float:
        return self.hyperparameters["target_ess"]

    @property
    def max_tilt(self) -> float:
        return self.hyperparameters["max_tilt"]

    @max_tilt.setter
    def max_tilt(self, value: float) -> None:
        _, value, _ = _check_auto_settings(self.target_ess, value, self.tilt_smoothing)
        explicit_delta = self.hyperparameters["sample_tilt"]
        if self.auto_tilt and explicit_delta is not None and explicit_delta > value:
            raise ValueError(f"max_tilt={value} is below sample_tilt={explicit_delta}")
        self.hyperparameters["max_tilt"] = value

    @property
    def tilt_smoothing(self) -> float:
        return self.hyperparameters["tilt_smoothing"]

    def _tilt_from_aggregation(self, tau: float) -> float:
        """``t`` with aggregation tilt ``tau``: ``tau + delta`` (``2 tau`` when ``delta = t/2``)."""
        if not self.sampler.targets_tilted_density:
            return tau
        explicit_delta = self.hyperparameters["sample_tilt"]
        return 2.0 * tau if explicit_delta is None else tau + explicit_delta

    def _max_aggregation_tilt(self) -> float:
        """``tau_max``: the aggregation tilt at ``t = max_tilt``."""
        cap = self.max_tilt
        if not self.sampler.targets_tilted_density:
            return cap
        explicit_delta = self.hyperparameters["sample_tilt"]
        return cap / 2.0 if explicit_delta is None else max(cap - explicit_delta, 0.0)

    def _auto_aggregation_tilt(self) -> float:
        """``tau_{k+1} = min(exp(m_k), tau_max)``; ``0`` before the first step."""
        if self._log_tilt_ema is None:
            return 0.0
        return min(math.exp(self._log_tilt_ema), self._max_aggregation_tilt())

    def _update_auto_tilt(self, losses: list[float]) -> float:
        """Fold this step's (global) losses into the smoothed log tilt; returns this step's ``tau*_k``."""
        finite = [x for x in losses if math.isfinite(x)]
        cap = self._max_aggregation_tilt()
        if not finite or cap == 0.0:
            return cap  # nothing to learn from (all non-finite were skipped), or nothing to choose
        chosen = tilt_for_ess(finite, self.target_ess, max_tilt=cap)
        log_chosen = math.log(max(chosen, _SMALLEST_TILT))
        if self._log_tilt_ema is None:
            self._log_tilt_ema = log_chosen
        else:
            beta = self.tilt_smoothing
            self._log_tilt_ema = beta * self._log_tilt_ema + (1.0 - beta) * log_chosen
        return chosen

    # tilt is read every step, so a schedule (or a user) may change it between steps
    @property
    def tilt(self) -> float:
        """``t`` of the next step (with ``tilt="auto"``: the one the rule has chosen for it)."""
        if self.auto_tilt:
            return self._tilt_from_aggregation(self._auto_aggregation_tilt())
        return self.hyperparameters["tilt"]

    @tilt.setter
    def tilt(self, value: float | str) -> None:
        if value == AUTO_TILT:
            explicit_delta = self.hyperparameters["sample_tilt"]
            if explicit_delta is not None and explicit_delta > self.max_tilt:
                raise ValueError(f"max_tilt={self.max_tilt} is below sample_tilt={explicit_delta}")
            self.hyperparameters["tilt"] = AUTO_TILT
            return
        value = check_tilt(value, "tilt")
        if self.hyperparameters["sample_tilt"] is not None and self.hyperparameters["sample_tilt"] > value:
            raise ValueError(f"tilt={value} is below sample_tilt={self.hyperparameters['sample_tilt']}")
        self.hyperparameters["tilt"] = value

    @property
    def num_samples(self) -> int:
        return self.hyperparameters["num_samples"]

    @property
    def rho(self) -> float:
        return self.hyperparameters["rho"]

    @property
    def sample_tilt(self) -> float:
        """``delta``: the explicit value, or ``tilt / 2`` when constructed with ``sample_tilt=None``; always
        ``0`` for a sampler that draws from ``mu`` itself (``targets_tilted_density = False``, e.g. ``"naive"``)."""
        if not self.sampler.targets_tilted_density:
            return 0.0  # samples from mu itself: the whole tilt goes into the weights
        value = self.hyperparameters["sample_tilt"]
        return self.tilt / 2 if value is None else value

    @property
    def aggregation_tilt(self) -> float:
        """``t - delta``: the tilt of the weights that combine the sampled gradients."""
        if self.auto_tilt:
            return self._auto_aggregation_tilt()
        return math.inf if math.isinf(self.tilt) else self.tilt - self.sample_tilt

    @property
    def ascent_labels(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(getattr(self.sampler, "ascent_labels", frozenset()))

    @property
    def grad_evals_per_step(self) -> int | float:
        """Gradient-evaluation equivalents per step, averaged over steps (``2 s`` for Algorithm 2; may be
        fractional for the cheap variants, see :class:`~tiltedsam.samplers.AscentSampler`)."""
        return evaluation_count(self.sampler.evaluations_per_step(self.num_samples))

    @property
    def evaluations_next_step(self) -> int | float:
        return evaluation_count(self.sampler.evaluations_next_step(self.num_samples))

    def batch_fraction(self, label: str) -> float:
        return self.sampler.batch_fraction(label)

    def _extra_state_dict(self) -> dict[str, Any]:
        # the auto rule's smoothed log-tilt and the sampler's own state (lazy ascent's kept directions)
        extra: dict[str, Any] = {"log_tilt_ema": self._log_tilt_ema}
        sampler_state = self.sampler.state_dict()
        if sampler_state:
            extra["sampler"] = sampler_state
        return extra

    def _load_extra_state_dict(self, extra: dict[str, Any]) -> None:
        value = extra.get("log_tilt_ema")
        self._log_tilt_ema = None if value is None else float(value)
        self.sampler.load_state_dict(extra.get("sampler", {}))

    def step_batched(self, inputs: Any, loss_fn: Callable[[Any], torch.Tensor], *,
                     randomness: str = "error") -> torch.Tensor:
        """EXPERIMENTAL: one step with the ``s`` samples evaluated in batched passes (needs
        ``parallel_samples=True``); ``loss = loss_fn(model(*inputs))``. Same update as :meth:`step` up
        to float rounding. See :mod:`tiltedsam.samplers.batched` for the models it supports, dropout
        (``randomness``) and memory. Returns the objective estimate."""
        from ..samplers.batched import run_batched_step
        from .sharded import any_dtensor

        if any_dtensor(self._params()):  # [sharded] torch.func needs whole parameters
            raise ValueError("step_batched (parallel_samples=True) needs whole parameters; with FSDP2-sharded "
                             "parameters use step() or manual_step()")
        return run_batched_step(self, inputs, loss_fn, randomness)

    def _algorithm(self) -> Generator[str, Any, float]:
        tilt, aggregation_tilt = self.tilt, self.aggregation_tilt  # fixed for the whole step
        params, origin = self._snapshot()
        ctx = SamplingContext(
            params=params,
            origin=origin,
            rho=self.rho,
            sample_tilt=self.sample_tilt,
            generator=self.generator,
            # "raise": every loss a sampler sees is checked (HMC's Metropolis test uses them all);
            # "ignore": the accumulator gives a sample with a non-finite loss weight zero
            loss_value=partial(self._loss_value, check=self.nonfinite == "raise"),
            local_loss_value=partial(self._local_loss_value, check=self.nonfinite == "raise"),
        )
        accumulator = TiltedGradientAccumulator(aggregation_tilt, nonfinite=self.hyperparameters["nonfinite"])
        try:
            for j in range(self.num_samples):
                self._sample_index = j
                if j > 0:
                    ctx.reset()
                ctx.sample_index, ctx.num_samples = j, self.num_samples
                loss, grads = yield from self.sampler.draw(ctx)
                accumulator.add(loss, grads)
                del grads  # hold no reference to this sample's .grad: it is freed at the next zero_grad
            combined = accumulator.result()
        finally:
            self._restore(params, origin)  # bit-exact, also when a sample failed or the loop was left
        self._write_grads(params, combined)
        return self._finish_step(accumulator, ctx, tilt, aggregation_tilt)

    def _finish_step(self, accumulator: TiltedGradientAccumulator, ctx: SamplingContext, tilt: float,
                     aggregation_tilt: float) -> float:
        """Record the step's diagnostics in :attr:`last_step` and, with ``tilt="auto"``, fold its (global)
        losses into the rule's smoothed tilt; returns the objective estimate. Every step path calls it."""
        losses = accumulator.losses
        weights = accumulator.weights()
        objective = float(tilted_mean(torch.tensor(losses, dtype=torch.float64), tilt, nonfinite="ignore"))
        extra = {"tilt": tilt, "sample_tilt": ctx.sample_tilt, "aggregation_tilt": aggregation_tilt}
        if self.auto_tilt:
            extra["auto_tilt"] = self._update_auto_tilt(list(losses))
        self.last_step = StepDiagnostics(
            objective=objective,
            losses=list(losses),
            weights=weights.tolist(),
            effective_sample_size=float(effective_sample_size(weights)),
            extra={**extra, **ctx.diagnostics},
        )
        return objective


#: log of a chosen tilt is taken of at least this (a bisection result of exactly 0 needs alpha = 1)
_SMALLEST_TILT = 1e-12


def _check_auto_settings(target_ess: Any, max_tilt: Any, tilt_smoothing: Any) -> tuple[float, float, float]:
    """Validate the auto rule's settings (also when the rule is off, so a later ``tilt = "auto"`` works)."""
    if isinstance(target_ess, bool) or not isinstance(target_ess, (int, float)) or not (0.0 < target_ess <= 1.0):
        raise ValueError(f"target_ess must be a fraction of num_samples in (0, 1], got {target_ess!r}")
    max_tilt = check_tilt(max_tilt, "max_tilt")
    if math.isinf(max_tilt):
        raise ValueError("max_tilt must be finite (nearly tied losses would ask tilt='auto' for an infinite tilt)")
    if (isinstance(tilt_smoothing, bool) or not isinstance(tilt_smoothing, (int, float))
            or not (0.0 <= tilt_smoothing < 1.0)):
        raise ValueError(f"tilt_smoothing must be in [0, 1), got {tilt_smoothing!r}")
    return float(target_ess), max_tilt, float(tilt_smoothing)
