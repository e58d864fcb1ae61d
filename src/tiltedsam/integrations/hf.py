"""Train any tiltedsam optimizer (SAM, TSAM, ...) with the Hugging Face ``Trainer``.

Build the optimizer on the model and hand it to :class:`PerturbationTrainer` through ``optimizers=``
(the Trainer builds its LR scheduler on it when the second entry is ``None``)::

    optimizer = create_optimizer("tsam", model.parameters(), model=model, base_optimizer="adamw", lr=5e-5,
                                 num_samples=3)
    trainer = PerturbationTrainer(model=model, args=args, train_dataset=train, optimizers=(optimizer, None))
    trainer.train()

Its ``training_step`` runs the evaluations the optimizer asks for on the batch (every micro-batch of a
gradient-accumulation group at every point), through the Trainer's own ``compute_loss`` and
``accelerator.backward``, so mixed precision (``fp16=True`` with its ``GradScaler``, ``bf16=True``),
gradient clipping (``max_grad_norm``, applied to the combined gradient), LR schedulers, DDP,
``save_steps`` and ``resume_from_checkpoint`` work as for any optimizer. See ``docs/integrations.md``.

Importing this module without transformers/accelerate raises one ``ImportError`` naming ``tiltedsam[hf]``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

from .common import CombinedGradientStep, check_perturbation_optimizer, diagnostics_of, require_extra, run_evaluations

require_extra("accelerate", "hf")
_transformers = require_extra("transformers", "hf")

__all__ = ["PerturbationTrainer"]


class PerturbationTrainer(_transformers.Trainer):
    """A ``transformers.Trainer`` whose optimizer is a tiltedsam optimizer (pass it as ``optimizers=(opt, sched)``).

    What changes against the plain Trainer:

    * one optimizer step costs the optimizer's evaluations (``optimizer.grad_evals_per_step`` forward and
      backward passes over the batch: SAM 2, TSAM ``2 s``), all inside the ``training_step`` of the
      last micro-batch of the step;
    * with ``gradient_accumulation_steps = k`` the first ``k - 1`` micro-batches are only collected;
      every evaluation then runs on all ``k`` at the same perturbed point, each loss scaled as the
      Trainer scales it (divided by ``k``, or normalised by ``num_items_in_batch`` when the model takes
      it), so the step is the step on the union of the micro-batches -- the perturbation comes from the
      whole accumulated batch's gradient;
    * the training loss the Trainer reports is the optimizer's objective (``last_step.objective``: the
      loss at SAM's perturbed point, TSAM's tilted loss), and the Trainer's ``log`` also receives the
      mean over the logging interval of ``optimizer/objective``, ``optimizer/effective_sample_size``
      and the numeric extras (TSAM's ``optimizer/tilt``, ...).

    The optimizer's ``state_dict`` (its base optimizer's, its noise generator's and its own state) is
    what the Trainer writes to ``optimizer.pt``; it is plain tensors and numbers, which the Trainer loads
    with ``torch.load(weights_only=True)`` on ``resume_from_checkpoint``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_micro_batches: list[tuple[dict[str, Any], Any]] = []
        self._diagnostics_sum: dict[str, float] = {}
        self._diagnostics_count = 0
        self._combined_step: CombinedGradientStep | None = None

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise ValueError(
                "PerturbationTrainer needs the optimizer through optimizers=(optimizer, scheduler_or_None), e.g. "
                "tiltedsam.create_optimizer('tsam', model.parameters(), model=model, lr=...)"
            )
        optimizer = check_perturbation_optimizer(self.optimizer, "PerturbationTrainer")
        if self._combined_step is None or self._combined_step.optimizer is not optimizer:
            # before accelerate wraps it: the Trainer's optimizer.step() (through GradScaler.step when fp16)
            # then applies the base optimizer to the gradient training_step combined
            self._combined_step = CombinedGradientStep(optimizer).install()
        return self.optimizer

    @property
    def perturbation_optimizer(self) -> Any:
        """The tiltedsam optimizer (``self.optimizer`` may be accelerate's wrapper around it)."""
        if self._combined_step is None:
            raise RuntimeError("the optimizer is created when training starts (Trainer.train)")
        return self._combined_step.optimizer

    # ------------------------------------------------------------------ the step
    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Tensor | int | None = None) -> Tensor:
        self._pending_micro_batches.append((self._prepare_inputs(inputs), num_items_in_batch))
        if not self.accelerator.sync_gradients:  # not the last micro-batch of the step: collect only
            return torch.zeros((), device=self.args.device)
        micro_batches, self._pending_micro_batches = self._pending_micro_batches, []
        optimizer = self.perturbation_optimizer
        model.train()
        if self.args.n_gpu > 1:
            raise ValueError("PerturbationTrainer supports one device per process (DDP), not DataParallel (n_gpu > 1)")
        # fp16's GradScaler may overflow: then the step is skipped and the scale lowered, as usual
        completed = run_evaluations(
            optimizer, micro_batches, functools.partial(self._micro_batch_loss, model),
            self.accelerator.backward, functools.partial(self.accelerator.no_sync, model),
            stop_on_nonfinite_gradients=self.accelerator.scaler is not None,
        )
        if not completed:  # the Trainer's optimizer.step() finds the inf/NaN gradient and skips the step
            return torch.tensor(float("nan"), device=self.args.device)
        self._combined_step.mark_ready()  # type: ignore[union-attr]
        for key, value in diagnostics_of(optimizer).items():
            self._diagnostics_sum[key] = self._diagnostics_sum.get(key, 0.0) + value
        self._diagnostics_count += 1
        return torch.tensor(optimizer.last_step.objective, device=self.args.device)

    def _micro_batch_loss(self, model: nn.Module, micro_batch: tuple[dict[str, Any], Any], evaluation: Any) -> Tensor:
        """One micro-batch's loss at the current point, scaled for accumulation as the Trainer scales it."""
        inputs, num_items_in_batch = micro_batch
        if evaluation.batch_fraction < 1:
            inputs = _slice_inputs(inputs, evaluation)
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) \
                or getattr(self, "compute_loss_func", None) is not None
        if not scaled:
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's ``log``, plus the optimizer's mean diagnostics since the last training log."""
        if "loss" in logs and self._diagnostics_count:
            for key, total in self._diagnostics_sum.items():
                logs[f"optimizer/{key}"] = total / self._diagnostics_count
            self._diagnostics_sum, self._diagnostics_count = {}, 0
        super().log(logs, *args, **kwargs)


def _slice_inputs(inputs: dict[str, Any], evaluation: Any) -> dict[str, Any]:
    """The fraction ``evaluation.batch_fraction`` of a batch dict: every tensor whose first dimension is the
    batch size is sliced with ``evaluation.batch``; everything else is passed unchanged."""
    sizes = [len(v) for v in inputs.values() if isinstance(v, Tensor) and v.dim() > 0]
    if not sizes:
        return inputs
    size = max(sizes)
    keys = [k for k, v in inputs.items() if isinstance(v, Tensor) and v.dim() > 0 and len(v) == size]
    sliced = evaluation.batch(*(inputs[k] for k in keys))
    sliced = (sliced,) if isinstance(sliced, Tensor) else sliced
    return {**inputs, **dict(zip(keys, sliced))}
