"""Tilted SAM (TSAM): Algorithm 1 of the paper, with a pluggable perturbation sampler."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Generator

import torch
from torch import nn
from torch.optim import Optimizer

from ..samplers import Sampler, SamplingContext, make_sampler
from ..tilt import TiltedGradientAccumulator, check_tilt, effective_sample_size, tilted_mean
from .base import PerturbationOptimizer, StepDiagnostics

__all__ = ["TSAM"]


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
    ``tilt = 0`` weights the samples uniformly; ``tilt = inf`` keeps the gradient of the largest loss
    (whatever ``sample_tilt``). With ``num_samples=1, noise_radius=0`` the update is exactly SAM's.

    Args:
        params: parameters or groups.
        base_optimizer: base optimizer class (default ``torch.optim.SGD``); ``**base_kwargs`` go to it.
        tilt: ``t >= 0`` or ``inf``.
        num_samples: ``s >= 1`` perturbations per step.
        rho: ascent step size (radius of the SAM-style ascent), ``>= 0``.
        noise: ``"gaussian"`` (``N(0, noise_std^2 I)`` clipped to global L2 norm ``noise_radius``, as in
            the authors' code) or ``"uniform"`` (uniform in the global-L2 ball of radius ``noise_radius``).
        noise_radius: radius of the noise ball (global L2 norm over all parameters), ``>= 0``.
        noise_std: standard deviation of the Gaussian noise before clipping.
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
        sample_tilt: float | None = None,
        sampler: str | Sampler = "ascent",
        sampler_options: dict[str, Any] | None = None,
        nonfinite: str = "raise",
        model: nn.Module | None = None,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        tilt = check_tilt(tilt, "tilt")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        rho = self._check_nonnegative("rho", rho)
        if sample_tilt is not None:
            sample_tilt = check_tilt(sample_tilt, "sample_tilt")
            if sample_tilt > tilt:
                raise ValueError(f"sample_tilt must satisfy 0 <= sample_tilt <= tilt={tilt}, got {sample_tilt!r}")
        if nonfinite not in ("raise", "ignore"):
            raise ValueError(f"nonfinite must be 'raise' or 'ignore', got {nonfinite!r}")
        if isinstance(sampler, Sampler):
            self.sampler = make_sampler(sampler, **(sampler_options or {}))
        elif sampler == "ascent":
            self.sampler = make_sampler("ascent", noise=noise, noise_radius=noise_radius, noise_std=noise_std,
                                        **(sampler_options or {}))
        else:
            self.sampler = make_sampler(sampler, **(sampler_options or {}))
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
        }
        super().__init__(params, base_optimizer, hyper, model=model, seed=seed, nonfinite=nonfinite, **base_kwargs)

    #: a sample with a non-finite loss can get weight zero (the others still estimate the tilted mean)
    nonfinite_policies = ("raise", "ignore")

    def _describe_evaluation(self) -> str:
        return f"{super()._describe_evaluation()} of sample {getattr(self, '_sample_index', 0)}"

    # tilt is read every step, so a schedule (or a user) may change it between steps
    @property
    def tilt(self) -> float:
        return self.hyperparameters["tilt"]

    @tilt.setter
    def tilt(self, value: float) -> None:
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
        return math.inf if math.isinf(self.tilt) else self.tilt - self.sample_tilt

    @property
    def ascent_labels(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(getattr(self.sampler, "ascent_labels", frozenset()))

    @property
    def grad_evals_per_step(self) -> int:
        return self.num_samples * self.sampler.evaluations_per_sample()

    def _algorithm(self) -> Generator[str, Any, float]:
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
        accumulator = TiltedGradientAccumulator(self.aggregation_tilt, nonfinite=self.hyperparameters["nonfinite"])
        try:
            for j in range(self.num_samples):
                self._sample_index = j
                if j > 0:
                    ctx.reset()
                loss, grads = yield from self.sampler.draw(ctx)
                accumulator.add(loss, grads)
                del grads  # hold no reference to this sample's .grad: it is freed at the next zero_grad
            combined = accumulator.result()
        finally:
            self._restore(params, origin)  # bit-exact, also when a sample failed or the loop was left
        self._write_grads(params, combined)
        losses = accumulator.losses
        weights = accumulator.weights()
        objective = float(tilted_mean(torch.tensor(losses, dtype=torch.float64), self.tilt, nonfinite="ignore"))
        self.last_step = StepDiagnostics(
            objective=objective,
            losses=list(losses),
            weights=weights.tolist(),
            effective_sample_size=float(effective_sample_size(weights)),
            extra={"tilt": self.tilt, "sample_tilt": self.sample_tilt, **ctx.diagnostics},
        )
        return objective
