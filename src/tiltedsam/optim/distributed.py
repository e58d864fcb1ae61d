r"""How the perturbation optimizers cooperate with ``torch.distributed`` (DDP, ``torchrun``).

Every rank must make the same decisions from the same numbers: DDP averages the gradients; every loss
whose value changes the update (TSAM's weights ``w_j ~ exp((t - delta) L_j)``) or is returned as the
objective is averaged across ranks here, :math:`L_j = \frac1R \sum_r L_j^{(r)}`; the noise seed is
broadcast from rank 0 once. Losses that are only logged stay rank-local and cost no collective.
``DistributedSync(local_ascent=True)`` (m-sharpness) runs the ``ascent_only`` evaluations inside
``model.no_sync()``. The reasons and the collectives per step are in ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..functional import check_hyperparameter

__all__ = ["DistributedSync", "resolve_distributed", "scalar_loss_value"]


def scalar_loss_value(loss: Tensor | float) -> Tensor | float:
    """Check that ``loss`` is one number; return it detached (tensors stay on their device)."""
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"the closure must return a scalar loss, got a tensor of shape {tuple(loss.shape)}")
        return loss.detach()
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return float(loss)
    raise TypeError(f"the loss must be a scalar tensor or a number, got {type(loss).__name__}")


@dataclass
class DistributedSync:
    """Settings for how an optimizer communicates across ``torch.distributed`` ranks.

    Args:
        enabled: ``None`` (default, automatic) communicates whenever ``torch.distributed`` is
            initialised with more than one rank in ``process_group``; ``True`` additionally raises
            if it is not initialised when a step needs it; ``False`` never communicates (each rank
            behaves like a single process: use only for independent replicas, it makes TSAM's ranks
            diverge under DDP).
        process_group: the group to average losses and share the seed over; ``None`` is the
            default (world) group. Must be the group the DDP module synchronises gradients over.
        local_ascent: m-sharpness: compute the ascent direction from each rank's own shard (the
            ascent evaluations run under ``model.no_sync()``); needs the optimizer's ``model=`` to be
            the :class:`~torch.nn.parallel.DistributedDataParallel` module.
    """

    enabled: bool | None = None
    process_group: Any = None
    local_ascent: bool = False

    def __post_init__(self) -> None:
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be None (automatic), True or False, got {self.enabled!r}")
        check_hyperparameter("local_ascent", self.local_ascent, choices=(True, False))

    def is_active(self) -> bool:
        """Whether this optimizer communicates now (initialised, more than one rank, not disabled)."""
        if self.enabled is False:
            return False
        initialised = dist.is_available() and dist.is_initialized()
        if not initialised:
            if self.enabled:
                raise RuntimeError(
                    "distributed=True (DistributedSync(enabled=True)) but torch.distributed is not initialised; "
                    "call torch.distributed.init_process_group first (torchrun sets up its environment)"
                )
            return False
        return dist.get_world_size(self.process_group) > 1

    def _device(self) -> torch.device:
        """Where communication buffers live: NCCL needs CUDA tensors, gloo takes CPU ones."""
        if dist.get_backend(self.process_group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def average_loss(self, loss: Tensor | float) -> float:
        r"""The global mini-batch loss :math:`\frac1R\sum_r L^{(r)}` as a float (one all-reduce).

        Without an active process group it is just ``float(loss)``.
        """
        value = scalar_loss_value(loss)
        if not self.is_active():
            return float(value)
        device = self._device()
        # float64 so that averaging adds no rounding of its own; one element, so the cost is latency.
        buffer = (value.reshape(1) if isinstance(value, Tensor) else torch.tensor([value])).to(device, torch.float64)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.process_group)
        return float(buffer) / dist.get_world_size(self.process_group)

    def shared_seed(self, seed: int) -> int:
        """Rank 0's ``seed`` on every rank (one broadcast); ``seed`` itself when not distributed."""
        if not self.is_active():
            return seed
        buffer = torch.tensor([seed], dtype=torch.int64, device=self._device())
        source = dist.get_global_rank(self.process_group, 0) if self.process_group is not None else 0
        dist.broadcast(buffer, src=source, group=self.process_group)
        return int(buffer.item())

    def evaluation_context(self, model: nn.Module | None, is_ascent: bool) -> ContextManager[Any]:
        """``model.no_sync()`` around an ascent evaluation in m-sharpness mode; else a no-op."""
        if not (self.local_ascent and is_ascent and self.is_active()):
            return contextlib.nullcontext()
        no_sync = getattr(model, "no_sync", None)
        if no_sync is None:
            raise ValueError("DistributedSync(local_ascent=True) needs the optimizer's model= to be the "
                             f"DistributedDataParallel module (it calls model.no_sync()), got {type(model).__name__}")
        return no_sync()


def resolve_distributed(distributed: DistributedSync | bool | None) -> DistributedSync:
    """The optimizer argument ``distributed=``: ``None`` automatic, ``True`` required, ``False`` off,
    or a :class:`DistributedSync` with explicit settings."""
    if isinstance(distributed, DistributedSync):
        return distributed
    if distributed is None or isinstance(distributed, bool):
        return DistributedSync(enabled=distributed)
    raise ValueError(f"distributed must be None (automatic), True, False or a DistributedSync, got {distributed!r}")
