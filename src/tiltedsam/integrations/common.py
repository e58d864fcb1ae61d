"""What the Lightning and Hugging Face adapters share: one step's evaluations over an accumulation
group of micro-batches, and the ``step()`` a framework calls afterwards.

A framework's training loop believes in one forward/backward per micro-batch followed by
``optimizer.step()``. A perturbation optimizer (SAM, TSAM, ...) needs several evaluations per step,
each at a point it chooses. The adapters therefore do, per optimizer step:

1. run :func:`run_evaluations`: for every :class:`~tiltedsam.Evaluation` of
   ``optimizer.manual_step(apply=False)``, the loss and gradient of the *whole* accumulation group at
   that point (the framework's own ``backward``, so loss scaling and DDP synchronisation stay the
   framework's), after which the parameters are restored and ``.grad`` holds the combined gradient;
2. let the framework call ``optimizer.step()`` as usual: the framework unscales, clips and steps
   through a :class:`CombinedGradientStep` installed on the optimizer, whose ``step()`` applies the
   base optimizer to the combined gradient (:meth:`~tiltedsam.PerturbationOptimizer.base_step`).

Only the public optimizer API is used (``manual_step``, ``Evaluation.record``, ``base_step``).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import types
from types import ModuleType
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
from torch import Tensor

from ..optim import PerturbationOptimizer

__all__ = ["require_extra", "check_perturbation_optimizer", "run_evaluations", "CombinedGradientStep",
           "diagnostics_of"]


def require_extra(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise one ``ImportError`` that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"tiltedsam.integrations.{extra} needs the optional dependency {module!r}, which is not installed "
            f"({error}); install it with: pip install 'tiltedsam[{extra}]'"
        ) from error


def check_perturbation_optimizer(optimizer: Any, where: str) -> PerturbationOptimizer:
    """``optimizer`` itself if it is a perturbation optimizer (SAM, TSAM, ...), else a ``TypeError``."""
    if not isinstance(optimizer, PerturbationOptimizer):
        raise TypeError(
            f"{where} needs a tiltedsam optimizer (tiltedsam.create_optimizer(name, params, ...), TSAM, SAM, ...), "
            f"got {type(optimizer).__name__}; a plain torch optimizer needs no adapter"
        )
    return optimizer


def run_evaluations(
    optimizer: PerturbationOptimizer,
    micro_batches: Sequence[Any],
    contribution: Callable[[Any, Any], Tensor],
    backward: Callable[[Tensor], None],
    no_sync: Callable[[], ContextManager[Any]] | None = None,
    stop_on_nonfinite_gradients: bool = False,
) -> bool:
    r"""Run every evaluation of one step of ``optimizer`` over all ``micro_batches``.

    At each point :math:`\theta'` the optimizer asks for (``manual_step(apply=False)``), the loss it
    receives is the sum of the micro-batches' contributions :math:`\sum_i c_i(\theta')` and the
    gradient is their summed gradient (``backward`` on each, accumulated in ``.grad``). With
    ``contribution = loss_i / n`` for ``n`` equal-sized micro-batches and a mean loss, this is the loss
    and gradient of their union, so the step equals ``step(closure)`` on the union batch (up to float
    rounding): the perturbation is chosen from the whole group's gradient, never from one micro-batch.

    ``contribution(micro_batch, evaluation)`` returns the scaled loss of one micro-batch (slice it with
    ``evaluation.batch(...)`` for sub-batch ascent); ``backward`` is the framework's backward (loss
    scaling, DDP); ``no_sync`` (optional) is a context that defers the DDP gradient all-reduce, used
    for every micro-batch but the last of each evaluation. Afterwards the parameters are restored and
    ``.grad`` holds the combined gradient; the base optimizer has *not* stepped. Returns ``True``.

    ``stop_on_nonfinite_gradients`` (for a ``GradScaler``, whose loss scale may overflow in float16):
    after each evaluation, if a gradient holds inf/NaN, leave the step at once -- the optimizer restores
    the parameters and counts no step -- and return ``False`` with that gradient still in ``.grad``,
    so the scaler's ``step`` finds it, skips the base step and lowers the scale, as for any optimizer.
    Without it an overflowing *ascent* gradient would move the parameters to NaN (its normalisation
    divides inf by inf). Costs one host synchronisation per evaluation.
    """
    if not micro_batches:
        raise ValueError("run_evaluations needs at least one micro-batch")
    last = len(micro_batches) - 1
    for evaluation in optimizer.manual_step(apply=False):
        total: Tensor | float = 0.0
        for index, micro_batch in enumerate(micro_batches):
            deferred = no_sync is not None and index < last
            with no_sync() if deferred else contextlib.nullcontext():
                loss = contribution(micro_batch, evaluation)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise TypeError(f"the training loss must be a scalar tensor, got {loss!r}")
                backward(loss)
            total = total + loss.detach().float()
        if stop_on_nonfinite_gradients and not _gradients_finite(optimizer):
            return False  # leaving manual_step restores the parameters; no step is counted
        evaluation.record(total)
    return True


def _gradients_finite(optimizer: PerturbationOptimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class CombinedGradientStep:
    """The ``step`` a framework calls on the optimizer once :func:`run_evaluations` has combined the gradient.

    Installed on the optimizer *instance* (``optimizer.step`` calls this object while installed), so the
    framework's own machinery around ``step`` -- Lightning's precision plugins and counters,
    ``GradScaler.step`` (which skips the step on inf/NaN gradients), accelerate's optimizer wrapper,
    LR-scheduler bookkeeping -- keeps working unchanged:

    * ``step()`` without a closure after :meth:`mark_ready`: runs ``before_base_step`` (gradient
      clipping) and :meth:`~tiltedsam.PerturbationOptimizer.base_step`; without :meth:`mark_ready` it
      raises (there is no combined gradient to apply);
    * ``step(closure)`` with ``closure_runs_evaluations=True`` (Lightning, whose plugins hand the
      optimizer the closure that runs the evaluations): calls the closure, then as above;
    * ``step(closure)`` otherwise: the optimizer's own ``step(closure)``, unchanged.

    :meth:`uninstall` restores what ``optimizer.step`` was before.
    """

    def __init__(self, optimizer: PerturbationOptimizer, *, before_base_step: Callable[[], None] | None = None,
                 closure_runs_evaluations: bool = False) -> None:
        self.optimizer = optimizer
        self.before_base_step = before_base_step
        self.closure_runs_evaluations = closure_runs_evaluations
        self.ready = False
        self.applied = 0  # base steps taken through this object (a GradScaler may skip some)
        self._previous = optimizer.__dict__.get("step")  # e.g. an LR scheduler's step counter, or None
        # torch's LR schedulers look for this marker on optimizer.step to know they wrapped it
        self._wrapped_by_lr_sched = getattr(self._previous, "_wrapped_by_lr_sched", False)
        self.installed = False

    def install(self) -> "CombinedGradientStep":
        controller = self

        def step(optimizer: PerturbationOptimizer, closure: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
            return controller(closure, **kwargs)

        if self._wrapped_by_lr_sched:
            step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        # a bound method (not a callable object): torch's LR schedulers re-wrap ``step.__func__``
        self.optimizer.step = types.MethodType(step, self.optimizer)  # type: ignore[method-assign]
        self.installed = True
        return self

    def uninstall(self) -> None:
        if not self.installed:
            return
        if self._previous is None:
            self.optimizer.__dict__.pop("step", None)
        else:
            self.optimizer.step = self._previous  # type: ignore[method-assign]
        self.installed = False

    def mark_ready(self) -> None:
        """The evaluations of this step are done; ``.grad`` holds the combined gradient."""
        self.ready = True

    def _original_step(self, closure: Callable[..., Any]) -> Any:
        if self._previous is not None:
            return self._previous(closure)
        return type(self.optimizer).step(self.optimizer, closure)

    def __call__(self, closure: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"{type(self.optimizer).__name__}.step got unexpected arguments {sorted(kwargs)}")
        result = None
        if closure is not None:
            if not self.closure_runs_evaluations:
                return self._original_step(closure)
            result = closure()
        if not self.ready:
            raise RuntimeError(
                f"{type(self.optimizer).__name__}.step() was called without a closure before the training step ran "
                "the optimizer's evaluations; inside a framework the adapter's training step must run first"
            )
        self.ready = False
        if self.before_base_step is not None:
            self.before_base_step()
        self.optimizer.base_step()
        self.applied += 1
        if self._wrapped_by_lr_sched:
            self.optimizer._opt_called = True  # what the scheduler's own wrapper records (no warning)
        return result


@contextlib.contextmanager
def combined_gradient_step(optimizer: PerturbationOptimizer, **options: Any) -> Iterator[CombinedGradientStep]:
    """:class:`CombinedGradientStep` installed for the duration of the ``with`` block."""
    step = CombinedGradientStep(optimizer, **options).install()
    try:
        yield step
    finally:
        step.uninstall()


def diagnostics_of(optimizer: PerturbationOptimizer) -> dict[str, float]:
    """The last step's diagnostics as finite numbers for a logger: ``objective``, ``effective_sample_size``
    and every numeric entry of ``last_step.extra`` (TSAM: ``tilt``, ``sample_tilt``, ...; SAM: ``clean_loss``).
    NaN and inf (a quantity the optimizer does not define) are left out: loggers expect numbers."""
    step = optimizer.last_step
    values: dict[str, Any] = {"objective": step.objective, "effective_sample_size": step.effective_sample_size}
    for key, value in step.extra.items():
        values.setdefault(key, value)
    numbers: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[key] = float(value)
    return numbers
