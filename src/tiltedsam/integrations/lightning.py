"""Train any tiltedsam optimizer (SAM, TSAM, ...) in a PyTorch Lightning ``LightningModule``.

Put :class:`PerturbationOptimizerMixin` first among the bases, define :meth:`~PerturbationOptimizerMixin.training_loss`
(the loss of one batch; the mixin supplies ``training_step``) and return the optimizer from
``configure_optimizers``::

    class Classifier(PerturbationOptimizerMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))

        def training_loss(self, batch, evaluation):
            x, y = evaluation.batch(*batch)      # the whole batch unless the optimizer asks for a fraction
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return create_optimizer("tsam", self.parameters(), model=self, lr=0.1, num_samples=3)

Each optimizer step runs the evaluations the optimizer asks for (``optimizer.grad_evals_per_step``
forward/backward passes) on the same batch through ``self.manual_backward`` (manual optimisation), so
Lightning's precision plugins (``"bf16-mixed"``, ``"16-mixed"`` with its ``GradScaler``), its DDP
strategy and its checkpoints work as for any optimizer. See ``docs/integrations.md``.

Importing this module without Lightning raises one ``ImportError`` naming ``tiltedsam[lightning]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .common import (
    check_perturbation_optimizer,
    combined_gradient_step,
    diagnostics_of,
    require_extra,
    run_evaluations,
)

require_extra("lightning.pytorch", "lightning")

__all__ = ["PerturbationOptimizerMixin"]

_CLIP_ALGORITHMS = ("norm", "value")


class PerturbationOptimizerMixin:
    """Manual optimisation of a ``LightningModule`` whose optimizer is a tiltedsam optimizer.

    Subclass it *before* ``LightningModule`` and implement :meth:`training_loss`. Settings (class or
    instance attributes):

    * ``accumulate_micro_batches`` (``k``, default 1): one optimizer step per ``k`` batches of the
      loader. Every evaluation of that step runs on all ``k`` micro-batches at the same perturbed point,
      each loss divided by the number of micro-batches in the group, so the step is the step on their
      union (for equal-sized micro-batches and a mean loss; BatchNorm still normalises per micro-batch).
      The last group of an epoch may be smaller. Use this instead of ``Trainer(accumulate_grad_batches=...)``,
      which Lightning does not allow with manual optimisation.
    * ``gradient_clip_val`` / ``gradient_clip_algorithm`` (``None`` / ``"norm"``): clip the *combined*
      gradient, after the precision plugin unscaled it and before the base optimizer steps (clipping
      the ascent gradient would be pointless: SAM normalises it). Use this instead of
      ``Trainer(gradient_clip_val=...)``, which Lightning does not allow with manual optimisation.
    * ``log_optimizer_diagnostics`` (``True``): ``self.log`` the step's ``objective``,
      ``effective_sample_size`` and numeric extras (TSAM's ``tilt``, ...) under ``"optimizer/..."``.

    LR schedulers returned by ``configure_optimizers`` are stepped as Lightning steps them in automatic
    optimisation (``interval="step"``: after every ``frequency`` optimizer steps; ``"epoch"``: at the
    end of every ``frequency`` epochs; a ``monitor``\\ ed one with that metric), through the
    ``lr_scheduler_step`` hook. A subclass that overrides ``on_train_epoch_end`` must call
    ``super().on_train_epoch_end()``.

    The optimizer's state (its base optimizer's, its noise generator's and its own) is what Lightning
    saves as the optimizer state, so ``Trainer.fit(ckpt_path=...)`` resumes the step sequence exactly
    when the checkpoint was written at a step boundary (a checkpoint written between the micro-batches
    of one group does not hold the micro-batches already seen).
    """

    accumulate_micro_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    log_optimizer_diagnostics: bool = True

    # ------------------------------------------------------------------ Lightning's switch
    @property
    def automatic_optimization(self) -> bool:
        """Always ``False``: the optimizer's evaluations are driven by :meth:`perturbation_step`."""
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        if value:
            raise ValueError(
                f"{type(self).__name__} uses PerturbationOptimizerMixin, which needs manual optimisation "
                "(automatic_optimization=False): the optimizer evaluates several points per step"
            )

    # ------------------------------------------------------------------ what the user writes
    def training_loss(self, batch: Any, evaluation: Any) -> Tensor:
        """The (mean) loss of ``batch`` at the current parameters, as a scalar tensor. Called once per
        evaluation and micro-batch; do not call ``backward``. ``evaluation.batch(x, y)`` slices the batch
        to the fraction the evaluation asks for (sub-batch ascent; the whole batch otherwise)."""
        raise NotImplementedError(f"{type(self).__name__} must define training_loss(self, batch, evaluation)")

    # ------------------------------------------------------------------ the step
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self.perturbation_step(batch, batch_idx)

    def perturbation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """Collect ``batch``; when the accumulation group is complete (or the epoch ends), run one
        optimizer step on it. Returns the step's objective (detached), or ``None`` for a batch that only
        joined the group."""
        group_size = self.accumulate_micro_batches
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"accumulate_micro_batches must be an int >= 1, got {group_size!r}")
        # micro-batches of the current group; a group never spans epochs or fit calls
        owner = (id(self.trainer), self.trainer.current_epoch)
        if self.__dict__.get("_pending_owner") != owner:
            self.__dict__["_pending_owner"], self.__dict__["_pending_micro_batches"] = owner, []
        pending = self.__dict__["_pending_micro_batches"]
        pending.append(batch)
        last_of_epoch = batch_idx + 1 >= self.trainer.num_training_batches
        if len(pending) < group_size and not last_of_epoch:
            return None
        micro_batches = list(pending)
        pending.clear()

        lightning_optimizer = self.optimizers()
        if isinstance(lightning_optimizer, list):
            raise ValueError(f"PerturbationOptimizerMixin drives one optimizer, configure_optimizers returned "
                             f"{len(lightning_optimizer)}")
        optimizer = check_perturbation_optimizer(lightning_optimizer.optimizer, "PerturbationOptimizerMixin")
        count = len(micro_batches)
        # DDP: all-reduce once per evaluation (on its last micro-batch), not once per micro-batch
        no_sync = (lambda: lightning_optimizer.toggle_model(sync_grad=False)) if count > 1 else None

        # a GradScaler (16-mixed) may overflow: then the step is skipped and the scale lowered, as usual
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        with combined_gradient_step(optimizer, before_base_step=lambda: self._clip_combined_gradient(optimizer),
                                    closure_runs_evaluations=True) as step:
            def closure() -> None:
                if run_evaluations(optimizer, micro_batches, lambda mb, ev: self.training_loss(mb, ev) / count,
                                   self.manual_backward, no_sync, stop_on_nonfinite_gradients=scaled):
                    step.mark_ready()

            # through Lightning's optimizer wrapper: precision plugin (scaler), hooks, step counters
            lightning_optimizer.step(closure=closure)
        if not step.applied:
            return None  # skipped (inf/NaN gradient under a GradScaler): no scheduler step, nothing to log

        self._step_lr_schedulers("step")
        if self.log_optimizer_diagnostics:
            for key, value in diagnostics_of(optimizer).items():
                self.log(f"optimizer/{key}", value, on_step=True, on_epoch=False, batch_size=1)
        return torch.tensor(optimizer.last_step.objective)

    def _clip_combined_gradient(self, optimizer: Any) -> None:
        if self.gradient_clip_val is None:
            return
        if self.gradient_clip_algorithm not in _CLIP_ALGORITHMS:
            raise ValueError(f"gradient_clip_algorithm must be one of {list(_CLIP_ALGORITHMS)}, "
                             f"got {self.gradient_clip_algorithm!r}")
        self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                            gradient_clip_algorithm=self.gradient_clip_algorithm)

    # ------------------------------------------------------------------ LR schedulers
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # type: ignore[misc]
        self._step_lr_schedulers("epoch")

    def _step_lr_schedulers(self, interval: str) -> None:
        trainer = self.trainer
        count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        for config in trainer.lr_scheduler_configs:
            if config.interval != interval or count % config.frequency:
                continue
            metric = None
            if config.monitor is not None:
                metric = trainer.callback_metrics.get(config.monitor)
                if metric is None:
                    if config.strict:
                        raise KeyError(f"the LR scheduler monitors {config.monitor!r}, which was not logged; "
                                       f"logged: {sorted(trainer.callback_metrics)}")
                    continue
            self.lr_scheduler_step(config.scheduler, metric)
