r"""Schedules for TSAM's tilt ``t`` (the paper's Fig. 4): constant, linear increase, linear decrease.

Used like a PyTorch LR scheduler: build it after the optimizer (it sets the first step's ``t``),
call :meth:`TiltScheduler.step` after each ``optimizer.step()``, and keep its :meth:`state_dict`
in checkpoints next to the optimizer's.
"""

from __future__ import annotations

import math
from typing import Any

from ..functional import check_hyperparameter
from ..tilt import check_tilt

__all__ = ["TiltScheduler", "SCHEDULE_KINDS", "scheduled_tilt"]

SCHEDULE_KINDS = ("constant", "increase", "decrease")
_STATE_FORMAT = "tiltedsam.tilt_scheduler/1"


def scheduled_tilt(kind: str, step: int, total_steps: int, tilt: float) -> float:
    r"""``t`` at optimizer step ``step`` (0-based) of a ``total_steps``-step schedule towards ``tilt``.

    .. math::
        t_k = \begin{cases} t & \text{constant} \\ t\,\frac{k}{T-1} & \text{increase (0 at the first step, t at the last)} \\
        t\,\big(1 - \frac{k}{T-1}\big) & \text{decrease (t at the first step, 0 at the last)} \end{cases}

    with ``k = min(step, T - 1)``: after the last step the final value is held. With ``T = 1`` the
    single step gets the end value (``t`` for increase, ``0`` for decrease).
    """
    check_hyperparameter("kind", kind, choices=SCHEDULE_KINDS)
    if kind == "constant":
        return tilt
    k = min(max(step, 0), total_steps - 1)
    fraction = 1.0 if total_steps == 1 else k / (total_steps - 1)
    return tilt * fraction if kind == "increase" else tilt * (1.0 - fraction)


class TiltScheduler:
    """Set ``optimizer.tilt`` each step from a schedule (like ``torch.optim.lr_scheduler``).

    Args:
        optimizer: anything with a settable ``tilt`` (e.g. :class:`~tiltedsam.optim.TSAM`).
        kind: ``"constant"``, ``"increase"`` (linear 0 -> t) or ``"decrease"`` (linear t -> 0).
        total_steps: ``T >= 1``, the number of optimizer steps the schedule spans.
        tilt: the target ``t``; ``None`` takes the optimizer's current ``tilt``. ``inf`` only with
            ``"constant"`` (a line from 0 to infinity has no middle).

    A schedule that would go below an explicit ``sample_tilt`` (``delta <= t``) is rejected at
    construction; with ``sample_tilt=None`` (``delta = t / 2``) delta follows the schedule.

    **With ``tilt="auto"``** the schedule moves the *cap* ``max_tilt`` of the target-ESS rule (``tilt``
    defaults to it), and :meth:`get_last_tilt` returns the cap; ``t`` stays the rule's choice.
    """

    def __init__(self, optimizer: Any, kind: str = "constant", total_steps: int = 1, tilt: float | None = None) -> None:
        if not hasattr(optimizer, "tilt"):
            raise ValueError(f"optimizer must have a 'tilt' (e.g. TSAM), got {type(optimizer).__name__}")
        check_hyperparameter("kind", kind, choices=SCHEDULE_KINDS)
        check_hyperparameter("total_steps", total_steps, integer=True, low=1)
        self.schedules_cap = bool(getattr(optimizer, "auto_tilt", False))
        default = optimizer.max_tilt if self.schedules_cap else optimizer.tilt
        target = check_tilt(default if tilt is None else tilt, "tilt")
        if self.schedules_cap and math.isinf(target):
            raise ValueError("tilt (the scheduled cap of a tilt='auto' optimizer) must be finite, got inf")
        if math.isinf(target) and kind != "constant":
            raise ValueError(f"tilt=inf works only with kind='constant', got kind={kind!r}")
        explicit_delta = getattr(optimizer, "hyperparameters", {}).get("sample_tilt")
        lowest = target if kind == "constant" else 0.0
        if explicit_delta is not None and explicit_delta > lowest:
            raise ValueError(
                f"the optimizer's sample_tilt={explicit_delta} exceeds the schedule's lowest tilt {lowest} "
                f"(kind={kind!r}); build the optimizer with sample_tilt=None (delta = t/2) or sample_tilt <= {lowest}"
            )
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = total_steps
        self.target_tilt = target
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        self._last_tilt = scheduled_tilt(self.kind, self.last_step, self.total_steps, self.target_tilt)
        if self.schedules_cap:
            self.optimizer.max_tilt = self._last_tilt
        else:
            self.optimizer.tilt = self._last_tilt

    def step(self) -> None:
        """Advance one optimizer step and set the next step's ``t``."""
        self.last_step += 1
        self._apply()

    def get_last_tilt(self) -> float:
        """The ``t`` set for the current step."""
        return self._last_tilt

    def state_dict(self) -> dict[str, Any]:
        return {"format": _STATE_FORMAT, "kind": self.kind, "total_steps": self.total_steps,
                "target_tilt": self.target_tilt, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule and set the optimizer's ``t`` for the restored step."""
        if not isinstance(state_dict, dict) or state_dict.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a TiltScheduler state dict (expected format {_STATE_FORMAT!r})")
        self.kind = state_dict["kind"]
        self.total_steps = state_dict["total_steps"]
        self.target_tilt = state_dict["target_tilt"]
        self.last_step = state_dict["last_step"]
        self._apply()

    def __repr__(self) -> str:
        return (f"TiltScheduler(kind={self.kind!r}, total_steps={self.total_steps}, tilt={self.target_tilt}, "
                f"last_step={self.last_step})")
