"""The same dropout masks for every evaluation of one optimizer step.

TSAM's step evaluates the mini-batch loss ``2s`` times (``s`` noise points, ``s`` ascent points; SAM twice)
and weights the gradients by ``exp(t L_j)`` (paper, Eq. 4 and Algorithm 1). If a model with dropout draws
fresh masks at each evaluation, ``L_j`` differs between points partly because the *network* differs, and the
tilt then chases dropout noise instead of the loss landscape around θ. With :class:`StepRngReplay` every
evaluation of a step sees one network: the global torch RNG (CPU and every initialised CUDA device) is
saved once at the start of the step and restored before each evaluation. After the step the RNG has
advanced by exactly one evaluation's draws, so consecutive steps still get fresh masks.

The harness does this by default (``optimizer.same_dropout_masks = true``); ``false`` gives each evaluation
its own masks (the behaviour of a plain closure). The optimizers' own noise comes from their private
generators, which this does not touch. Models without dropout (or other global-RNG use in ``forward``)
behave identically either way.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch

__all__ = ["StepRngReplay"]

T = TypeVar("T")


class StepRngReplay:
    """Save the global torch RNG state once per step; restore it before every evaluation of that step.

    >>> replay = StepRngReplay()
    >>> replay.save()                       # once, at the start of the step
    >>> closure = replay.wrap(closure)      # every call starts from the saved state
    >>> optimizer.step(closure)
    """

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)
        self._cpu: torch.Tensor | None = None
        self._cuda: list[torch.Tensor] | None = None

    def save(self) -> None:
        """Record the current CPU (and, once CUDA is initialised, every CUDA device's) RNG state."""
        if not self.enabled:
            return
        self._cpu = torch.get_rng_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore(self) -> None:
        """Put the RNG back to the state recorded by :meth:`save` (no-op when disabled)."""
        if not self.enabled:
            return
        if self._cpu is None:
            raise RuntimeError("StepRngReplay.restore() before save(): call save() at the start of each step")
        torch.set_rng_state(self._cpu)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)

    def wrap(self, closure: Callable[..., T]) -> Callable[..., T]:
        """``closure`` preceded by :meth:`restore`: each evaluation of the step draws the same masks.

        The wrapper takes what the optimizer passes (the :class:`~tiltedsam.optim.base.Evaluation` when
        ``closure`` takes one, for sub-batch ascent) and hands it on unchanged."""
        from ..optim.base import closure_takes_evaluation

        if not self.enabled:
            return closure
        if closure_takes_evaluation(closure):
            def replayed_with(evaluation: Any) -> T:
                self.restore()
                return closure(evaluation)

            return replayed_with

        def replayed() -> T:
            self.restore()
            return closure()

        return replayed
