"""What a checkpoint must hold before a run resumes from it.

A valid checksum (:mod:`.checkpoints`) proves a file is what ``save_checkpoint`` wrote, not that a
run wrote it (a re-saved payload may hold a weight of another shape, no ``rng``, ``epoch = "one"``).
:func:`check_resume_state` checks the structure against the run being resumed and restores it;
every failure is one :class:`CheckpointError` line naming the file and the entry.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError

__all__ = ["check_resume_state"]

_NUMBERS = (int, float)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_resume_state(checkpoint: dict[str, Any], file: Path, budget: Any, model: Any, optimizer: Any,
                       restore_rng: Any, loader_generator: Any, tilt_scheduler: Any = None,
                       load_training_state: Any = None) -> None:
    """Validate ``checkpoint`` for a run of ``budget`` and restore model, optimizer, scheduler and RNGs.

    Checks: integers ``epoch``, ``step`` with ``step = min(epoch * steps_per_epoch, total_steps)``; an
    older version's ``metrics``, a list of ``epoch`` dicts; ``train_seconds``, ``wall_seconds`` finite
    and >= 0; ``rng`` with four generators' states; weights that load. ``load_training_state()``, when
    given, restores model and optimizer instead (a sharded run's ``torch.distributed.checkpoint``).
    """
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {str(file)!r} does not fit this run: {what}; not resuming from it "
                               "(move it away to start the run again)")

    epoch, step = checkpoint.get("epoch"), checkpoint.get("step")
    if not (_int(epoch) and _int(step)) or epoch < 0 or step < 0:
        raise bad(f"epoch = {epoch!r} and step = {step!r} must be integers >= 0")
    if step > budget.total_steps:
        raise bad(f"step = {step} is beyond the run's budget of {budget.total_steps} steps")
    if step != min(epoch * budget.steps_per_epoch, budget.total_steps):
        raise bad(f"step = {step} does not match epoch = {epoch} at {budget.steps_per_epoch} steps per epoch")
    metrics = checkpoint.get("metrics")  # only in checkpoints of older versions; metrics.csv holds the epochs
    if "metrics" in checkpoint and (not isinstance(metrics, list) or len(metrics) != epoch
                                    or not all(isinstance(r, dict) for r in metrics)):
        raise bad(f"metrics must be a list of {epoch} epoch rows")
    for name in ("train_seconds", "wall_seconds"):
        value = checkpoint.get(name)
        if not isinstance(value, _NUMBERS) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise bad(f"{name} = {value!r} must be a finite number >= 0")
    rng = checkpoint.get("rng")
    if not isinstance(rng, dict) or not {"torch", "numpy", "python", "loader"} <= set(rng):
        raise bad("rng must hold the torch, numpy, python and loader generator states")
    weights = ((("model", lambda: model.load_state_dict(checkpoint["model"])),
                ("optimizer", lambda: optimizer.load_state_dict(checkpoint["optimizer"])))
               if load_training_state is None else (("model and optimizer", load_training_state),))
    for what, restore in (*weights,
                          ("tilt_scheduler", lambda: tilt_scheduler is None
                           or tilt_scheduler.load_state_dict(checkpoint["tilt_scheduler"])),
                          ("rng", lambda: restore_rng(rng, loader_generator))):
        try:
            restore()
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError) as exc:
            first = " ".join(str(exc).split("\n")[0].split())[:300]
            raise bad(f"its {what} state cannot be restored ({type(exc).__name__}: {first})") from None


def checked_config(payload: dict[str, Any], file: Path, build: Any) -> Any:
    """``build(payload["config"])`` (a :class:`RunConfig`), or one :class:`CheckpointError` line."""
    try:
        return build(payload["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        first = " ".join(str(exc).split("\n")[0].split())[:300]
        raise CheckpointError(f"checkpoint {str(file)!r} holds no usable run config ({type(exc).__name__}: "
                              f"{first})") from None


def load_weights(model: Any, payload: dict[str, Any], file: Path) -> None:
    """``model.load_state_dict(payload["model"])``, or one :class:`CheckpointError` line."""
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        first = " ".join(str(exc).split("\n")[0].split())[:300]
        raise CheckpointError(f"checkpoint {str(file)!r}: its model weights do not fit the model of its config "
                              f"({type(exc).__name__}: {first})") from None
