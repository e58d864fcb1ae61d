"""Tilted SAM (TSAM): Algorithm 1 of the paper with Algorithm 2 inline (:meth:`TSAM._program`), and other
perturbation samplers as strategies (:mod:`tiltedsam.optim.samplers`)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Generator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..functional import ascent_step, check_hyperparameter, move, restore, shift, unit_direction
from ..sharded import is_sharded
from ..tilt import (DEFAULT_MAX_TILT, DEFAULT_TARGET_ESS, DEFAULT_TILT_SMOOTHING, AutoTilt, TiltedGradientAccumulator,
                    check_tilt, effective_sample_size, tilted_mean)
from .base import PERTURBED, PerturbationOptimizer, Request, StepDiagnostics, _hyperparameter
from .distributed import scalar_loss_value
from .samplers import AscentSampler, Sampler, SamplingContext, make_sampler
from .samplers.base import evaluation_count
from .samplers.batched import BatchedAscentSampler

__all__ = ["TSAM", "build_sampler", "AUTO_TILT", "DEFAULT_TARGET_ESS", "DEFAULT_MAX_TILT", "DEFAULT_TILT_SMOOTHING"]

#: the value of ``tilt`` that switches on the adaptive (target-ESS) rule (:class:`~tiltedsam.tilt.AutoTilt`)
AUTO_TILT = "auto"

#: TSAM's own keyword arguments that configure the ``"ascent"`` sampler, with their defaults
ASCENT_SETTINGS = {"noise": "gaussian", "noise_radius": 1.0, "noise_std": 1.0, "ascent_direction": "per_sample",
                   "ascent_fraction": 1.0, "refresh_every": 1}


def build_sampler(sampler: str | Sampler = "ascent", sampler_options: dict[str, Any] | None = None,
                  **ascent: Any) -> Sampler:
    """The sampler TSAM builds from its arguments.

    ``ascent`` holds TSAM's top-level ascent settings (:data:`ASCENT_SETTINGS`), which configure the
    ``"ascent"`` sampler. With another sampler (whose settings go in ``sampler_options``) one that
    differs from its default would be ignored, so it raises a ``ValueError`` naming it."""
    unknown = set(ascent) - set(ASCENT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown TSAM settings {sorted(unknown)}")
    settings = {**ASCENT_SETTINGS, **ascent}
    if sampler == "ascent":
        return make_sampler("ascent", noise=settings["noise"], noise_radius=settings["noise_radius"],
                            noise_std=settings["noise_std"], direction=settings["ascent_direction"],
                            ascent_fraction=settings["ascent_fraction"], refresh_every=settings["refresh_every"],
                            **(sampler_options or {}))
    for key, default in ASCENT_SETTINGS.items():
        if settings[key] != default:
            name = sampler.name if isinstance(sampler, Sampler) else sampler
            raise ValueError(f"{key}={settings[key]!r} applies to the 'ascent' sampler only, got sampler={name!r} "
                             "(which would ignore it; its own settings go in sampler_options)")
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

    With the default ``"ascent"`` sampler (Algorithm 2) :meth:`step` calls the closure ``2 s`` times;
    the cheaper variants are documented on :class:`~tiltedsam.optim.samplers.AscentSampler`, and
    :attr:`grad_evals_per_step` reports their cost.
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
        sampler_options: settings for a sampler given by name (the noise and ascent settings above apply to
            ``"ascent"`` only; another sampler refuses them).
        nonfinite: ``"raise"`` (default) raises :class:`~tiltedsam.tilt.NonFiniteLossError` when a
            sample's loss is NaN/inf (parameters are restored first, no step is taken); ``"ignore"``
            gives such samples zero weight (the step still fails if all are non-finite).
        model: optional module whose BatchNorm statistics then move only in the first evaluation.
        seed: seed of the noise generator.
        parallel_samples: EXPERIMENTAL (``"ascent"`` sampler, needs ``model=``): enables
            :meth:`step_batched`, which evaluates the ``s`` samples in one ``torch.func.vmap`` pass per
            stage (:mod:`tiltedsam.optim.samplers.batched`). ``step``/``manual_step`` still evaluate in a loop.
        target_ess: with ``tilt="auto"``: the target ESS as a fraction ``alpha`` of ``s``, in ``(0, 1]``.
        max_tilt: with ``tilt="auto"``: the cap on ``t`` (finite, ``>= sample_tilt``).
        tilt_smoothing: with ``tilt="auto"``: the EMA factor ``beta`` in ``[0, 1)`` of ``log tau`` across steps.

    **tilt="auto"** (``docs/adaptive-tilt.md``): :class:`~tiltedsam.tilt.AutoTilt` sets the aggregation
    tilt ``tau = t - delta`` from the (under DDP: global) losses of the previous steps, capped at the
    ``tau`` of ``t = max_tilt``; the first step is uniform. ``t`` follows as ``2 tau``
    (``sample_tilt=None``), ``tau + delta`` (explicit ``delta``) or ``tau`` (``"naive"``). It needs
    ``target_ess * s > 1``. Reading :attr:`tilt` gives the next step's ``t``; assigning a number switches
    the rule off, assigning ``"auto"`` back on.

    After each step, :attr:`last_step` holds the per-sample losses, weights, effective sample size and
    the ``t`` used (``.extra``: ``aggregation_tilt`` and, with ``"auto"``, the step's own ``auto_tilt``).
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
        self._auto = AutoTilt(target_ess, tilt_smoothing)  # validates both, also when the rule is off
        max_tilt = AutoTilt.check_cap(max_tilt)
        tilt = max_tilt if auto else check_tilt(tilt, "tilt")  # the auto rule's t never exceeds the cap
        num_samples = check_hyperparameter("num_samples", num_samples, integer=True, low=1)
        if auto:
            _check_ess_target(target_ess, num_samples)
        rho = check_hyperparameter("rho", rho, low=0.0)
        if sample_tilt is not None:
            sample_tilt = check_tilt(sample_tilt, "sample_tilt")
            if sample_tilt > tilt:
                bound = "max_tilt" if auto else "tilt"
                raise ValueError(f"sample_tilt must satisfy 0 <= sample_tilt <= {bound}={tilt}, got {sample_tilt!r}")
        check_hyperparameter("parallel_samples", parallel_samples, choices=(True, False))
        ascent = dict(noise=noise, noise_radius=noise_radius, noise_std=noise_std, ascent_direction=ascent_direction,
                      ascent_fraction=ascent_fraction, refresh_every=refresh_every)
        if parallel_samples:
            if sampler != "ascent" or model is None:
                raise ValueError(f"parallel_samples=True needs sampler='ascent' and model=; got sampler={sampler!r}, "
                                 f"model={type(model).__name__}")
            if (ascent_direction, ascent_fraction, refresh_every) != ("per_sample", 1.0, 1):
                raise ValueError("parallel_samples=True batches Algorithm 2's per-sample ascent only; got "
                                 f"ascent_direction={ascent_direction!r}, ascent_fraction={ascent_fraction!r}, "
                                 f"refresh_every={refresh_every!r}")
            self.sampler: Sampler = BatchedAscentSampler(noise=noise, noise_radius=noise_radius, noise_std=noise_std,
                                                         **(sampler_options or {}))
        else:
            self.sampler = build_sampler(sampler, sampler_options, **ascent)
        if not self.sampler.targets_tilted_density and sample_tilt not in (None, 0.0):
            raise ValueError(
                f"sample_tilt={sample_tilt!r} given, but the {self.sampler.name!r} sampler draws eps from mu, not from "
                "exp(delta L): its samples are weighted by exp(t L) (delta = 0, Eq. 75); leave sample_tilt unset or 0"
            )
        hyper = {"tilt": AUTO_TILT if auto else tilt, "num_samples": num_samples, "rho": rho,
                 "sample_tilt": sample_tilt, "nonfinite": nonfinite, "sampler": self.sampler.config(),
                 "target_ess": self._auto.target_ess, "max_tilt": max_tilt, "tilt_smoothing": self._auto.smoothing}
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, nonfinite=nonfinite, **base_kwargs)

    #: a sample with a non-finite loss can get weight zero (the others still estimate the tilted mean)
    nonfinite_policies = ("raise", "ignore")

    def _describe_evaluation(self) -> str:
        return f"{super()._describe_evaluation()} of sample {getattr(self, '_sample_index', 0)}"

    @property
    def auto_tilt(self) -> bool:
        """Whether ``t`` is chosen by the target-ESS rule (``tilt="auto"``)."""
        return self.hyperparameters["tilt"] == AUTO_TILT

    target_ess = _hyperparameter("target_ess")
    tilt_smoothing = _hyperparameter("tilt_smoothing")
    num_samples = _hyperparameter("num_samples")
    rho = _hyperparameter("rho")

    max_tilt = _hyperparameter("max_tilt")

    @max_tilt.setter
    def max_tilt(self, value: float) -> None:
        value = AutoTilt.check_cap(value)
        if self.auto_tilt:
            self._check_not_below_delta("max_tilt", value)
        self.hyperparameters["max_tilt"] = value

    def _check_not_below_delta(self, name: str, value: float) -> None:
        explicit_delta = self.hyperparameters["sample_tilt"]
        if explicit_delta is not None and explicit_delta > value:
            raise ValueError(f"{name}={value} is below sample_tilt={explicit_delta}")

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

    # tilt is read every step, so a schedule (or a user) may change it between steps
    @property
    def tilt(self) -> float:
        """``t`` of the next step (with ``tilt="auto"``: the one the rule has chosen for it)."""
        if self.auto_tilt:
            return self._tilt_from_aggregation(self._auto.next_tilt(self._max_aggregation_tilt()))
        return self.hyperparameters["tilt"]

    @tilt.setter
    def tilt(self, value: float | str) -> None:
        if value == AUTO_TILT:
            self._check_not_below_delta("max_tilt", self.max_tilt)
            _check_ess_target(self.target_ess, self.num_samples)
            self.hyperparameters["tilt"] = AUTO_TILT
            return
        value = check_tilt(value, "tilt")
        self._check_not_below_delta("tilt", value)
        self.hyperparameters["tilt"] = value

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
            return self._auto.next_tilt(self._max_aggregation_tilt())
        return math.inf if math.isinf(self.tilt) else self.tilt - self.sample_tilt

    @property
    def has_ascent_only_evaluations(self) -> bool:  # type: ignore[override]
        return self.sampler.has_ascent_only_evaluations

    @classmethod
    def evaluations_for(cls, **settings: Any) -> int | float:
        """Gradient-evaluation equivalents per step, averaged over steps (``2 s`` for Algorithm 2; may be
        fractional for the cheap variants, see :class:`~tiltedsam.optim.samplers.AscentSampler`)."""
        merged = {**cls.setting_defaults(), **settings}
        sampler = build_sampler(merged["sampler"], merged.get("sampler_options"),
                                **{key: merged[key] for key in ASCENT_SETTINGS})
        return sampler.evaluations_per_step(int(merged["num_samples"]))

    @property
    def grad_evals_per_step(self) -> int | float:
        return evaluation_count(self.sampler.evaluations_per_step(self.num_samples))

    @property
    def evaluations_next_step(self) -> int | float:
        return evaluation_count(self.sampler.evaluations_next_step(self.num_samples))

    def _extra_state_dict(self) -> dict[str, Any]:
        # the auto rule's smoothed log-tilt and the sampler's own state (lazy ascent's kept directions)
        extra: dict[str, Any] = {"log_tilt_ema": self._auto.log_ema}
        sampler_state = self.sampler.state_dict()
        if sampler_state:
            extra["sampler"] = sampler_state
        return extra

    def _load_extra_state_dict(self, extra: dict[str, Any]) -> None:
        value = extra.get("log_tilt_ema")
        self._auto = AutoTilt(self.target_ess, self.tilt_smoothing, log_ema=None if value is None else float(value))
        self.sampler.load_state_dict(extra.get("sampler", {}))

    def step_batched(self, inputs: Any, loss_fn: Callable[[Any], torch.Tensor], *,
                     randomness: str = "error") -> torch.Tensor:
        """EXPERIMENTAL: one step with the ``s`` samples evaluated in batched passes (needs
        ``parallel_samples=True``); ``loss = loss_fn(model(*inputs))``. Same update as :meth:`step` up
        to float rounding. See :mod:`tiltedsam.optim.samplers.batched` for the models it supports, dropout
        (``randomness``) and memory. Returns the objective estimate."""
        sampler = self.sampler
        if not isinstance(sampler, BatchedAscentSampler):
            raise ValueError(f"step_batched needs TSAM(..., parallel_samples=True); this TSAM samples with {sampler!r}")
        if self.model is None:
            raise ValueError("step_batched needs TSAM(..., model=model): it evaluates that model functionally")
        if is_sharded(self._params()):  # torch.func evaluates whole parameters
            raise ValueError("step_batched (parallel_samples=True) needs whole parameters; with FSDP2-sharded "
                             "parameters use step() or manual_step()")
        if self.distributed.is_active():
            raise ValueError("step_batched does not support torch.distributed (DDP's gradient all-reduce runs in its "
                             "backward hooks, which a functional call bypasses); use step() or manual_step()")
        sampler.bind(self.model, inputs if isinstance(inputs, tuple) else (inputs,), loss_fn, randomness)
        try:
            for evaluation in self.manual_step():  # the bound sampler evaluates every sample itself
                raise RuntimeError(f"the batched step asked for a closure evaluation ({evaluation.label!r})")
        finally:
            sampler.unbind()
        return torch.tensor(self.last_step.objective)

    def _program(self, params: list[Tensor], origin: list[Tensor] | None
                 ) -> Generator[Request, Any, tuple[list[Tensor | None], StepDiagnostics]]:
        """Algorithm 1, with Algorithm 2 (and its cheap variants) inline: ``s`` samples ``theta + eps_j``, each
        folded into the streaming tilted average as soon as its gradient is known."""
        assert origin is not None
        tilt, aggregation_tilt = self.tilt, self.aggregation_tilt  # fixed for the whole step
        rho, count, sampler = self.rho, self.num_samples, self.sampler
        check = self.nonfinite == "raise"  # "ignore": the accumulator gives a non-finite sample weight zero
        ctx = SamplingContext(params=params, origin=origin, rho=rho, sample_tilt=self.sample_tilt,
                              generator=self.generator, loss_value=partial(self._loss_value, check=check),
                              local_loss_value=partial(self._local_loss_value, check=check))
        accumulator = TiltedGradientAccumulator(aggregation_tilt, nonfinite=self.nonfinite)
        if isinstance(sampler, BatchedAscentSampler) and sampler.batch is not None:
            for loss, grads in sampler.evaluate_all(ctx, count):  # all s samples in two batched passes
                accumulator.add(ctx.loss_value(loss), grads)
        elif not isinstance(sampler, AscentSampler):  # another strategy (HMC, naive) draws theta + eps_j itself
            for j in range(count):
                self._sample_index = j
                if j > 0:
                    restore(params, origin)
                loss, grads = yield from sampler.draw(ctx)
                accumulator.add(loss, grads)
                del grads  # hold no reference to this sample's .grad: it is freed at the next zero_grad
        else:
            # Algorithm 2: eps_j = delta_j + rho g_j / ||g_j||, g_j the gradient at theta + delta_j (per-sample
            # direction), or at theta for all samples (shared), or the direction kept from the last refresh (lazy)
            refresh = sampler.refresh_due(count)
            kept: list[list[Tensor | None] | None] = []  # lazy ascent: this step's unit directions
            for j in range(count):
                self._sample_index = j
                if j > 0:
                    restore(params, origin)
                # losses only logged: kept on the device, read after the perturbed loss (whose value the
                # weights need), so reading them does not stall the device a second time per sample
                logged: list[tuple[str, Any]] = []
                if sampler.shared and refresh and j == 0:
                    logged.append(("clean_loss", scalar_loss_value((yield sampler.clean_request))))
                    direction, finite = unit_direction(self._grads(params))
                    kept.append(direction if finite else None)  # used this step even if not finite, never kept
                noise = sampler.draw_noise(params, ctx.generator)
                if noise is not None:
                    shift(params, noise)
                    del noise
                if sampler.shared:
                    move(params, direction if refresh else sampler.directions[0], rho)
                elif refresh:
                    logged.append(("noise_loss", scalar_loss_value((yield sampler.noise_request))))
                    if sampler.lazy:
                        unit, finite = unit_direction(self._grads(params))
                        kept.append(unit if finite else None)
                    ascent_step(params, self._grads(params), rho)
                else:
                    move(params, sampler.directions[j], rho)
                loss = ctx.loss_value((yield PERTURBED))
                for key, value in logged:
                    ctx.record(key, ctx.local_loss_value(value))
                accumulator.add(loss, self._grads(params))
            sampler.end_step(refresh, kept)
        combined = accumulator.result()
        losses = list(accumulator.losses)
        weights = accumulator.weights()
        objective = float(tilted_mean(torch.tensor(losses, dtype=torch.float64), tilt, nonfinite="ignore"))
        extra = {"tilt": tilt, "sample_tilt": ctx.sample_tilt, "aggregation_tilt": aggregation_tilt}
        if self.auto_tilt:  # fold this step's (global) losses into the rule's smoothed tilt
            extra["auto_tilt"] = self._auto.observe(losses, self._max_aggregation_tilt())
        return combined, StepDiagnostics(objective=objective, losses=losses, weights=weights.tolist(),
                                         effective_sample_size=float(effective_sample_size(weights)),
                                         extra={**extra, **ctx.diagnostics}, tilt=tilt)


def _check_ess_target(target_ess: float, num_samples: int) -> None:
    """``tilt="auto"`` needs ``target_ess * num_samples > 1``: every weighting has ESS >= 1, so a lower target
    is no constraint and the rule would always return its cap (a hard max). One sample has nothing to weight."""
    if num_samples > 1 and target_ess * num_samples <= 1.0:
        raise ValueError(f"tilt='auto' with num_samples={num_samples} needs target_ess > 1/num_samples = "
                         f"{1 / num_samples:g}, got target_ess={target_ess!r}: an ESS of at least "
                         f"{target_ess * num_samples:g} holds for every tilt (ESS >= 1), so the rule would always "
                         "choose max_tilt; raise target_ess or num_samples")
