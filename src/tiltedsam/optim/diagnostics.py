"""Is the tilt doing anything? A check of the effective sample size (ESS) of TSAM's weights.

With ``s`` perturbed losses ``L_j`` and weights ``w_j ∝ exp((t - δ) L_j)`` the effective sample size
``ESS = (Σ w)² / Σ w²`` lies in ``[1, s]``. Two ends say the tilt is mis-set for the problem:

* ``ESS ≈ s``: uniform weights (losses nearly tied relative to ``1 / (t - δ)``): the tilt has no
  effect; a larger ``t``, ``noise_radius`` or ``rho`` spreads the losses (docs/tuning.md);
* ``ESS ≈ 1``: one sample takes all the weight, at ``s`` times SAM's cost; a smaller ``t`` helps.

:func:`ess_message` turns a (mean) ESS into such a warning; the harness emits it once per run as a
:class:`TiltDiagnosticWarning`.
"""

from __future__ import annotations

import math

__all__ = ["TiltDiagnosticWarning", "ess_message", "UNIFORM_FRACTION", "DEGENERATE_ESS"]

#: ESS at or above this fraction of s counts as "uniform weights"
UNIFORM_FRACTION = 0.99
#: ESS at or below this counts as "one sample takes all the weight"
DEGENERATE_ESS = 1.05


class TiltDiagnosticWarning(UserWarning):
    """The tilted weights are uniform (ESS ≈ s) or degenerate (ESS ≈ 1) over a stretch of training."""


def ess_message(ess: float | None, num_samples: int | None) -> str | None:
    """A one-line warning when the (mean) effective sample size ``ess`` of ``num_samples`` tilted
    weights is within 1% of ``s`` (no tilt effect) or at most 1.05 (one sample dominates); else None.

    ``None``/NaN ``ess`` or ``num_samples < 2`` (one point: nothing to weight) give None.
    """
    if ess is None or num_samples is None or num_samples < 2 or not math.isfinite(ess):
        return None
    if ess >= UNIFORM_FRACTION * num_samples:
        return (f"mean ESS {ess:.3f} of s={num_samples}: the tilted weights are uniform, so the tilt has no effect "
                "(TSAM = average of s noisy SAM gradients); raise t, noise_radius or rho until ESS drops, e.g. "
                "calibrate t to ESS ≈ s/2 with tiltedsam.tilt.tilt_for_ess on a pilot's per-step losses "
                "(docs/tuning.md, docs/label-noise.md)")
    if ess <= DEGENERATE_ESS:
        return (f"mean ESS {ess:.3f} of s={num_samples}: one sample takes all the weight each step (s× SAM's cost "
                "for one noisy point); lower t (docs/tuning.md)")
    return None
