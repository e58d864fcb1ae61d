r"""Sharded checkpoints of a model and its perturbation optimizer with ``torch.distributed.checkpoint`` (DCP).

Under FSDP2 no rank holds the whole model or the whole optimizer state, so a checkpoint is written by
every rank in parallel, each its own shards, and read back into *any* layout: another number of
ranks, or a plain unsharded model in one process. What is saved, and how:

=================================  ==========================================  ==========================
entry                              content                                     how DCP stores it
=================================  ==========================================  ==========================
``model``                          ``get_model_state_dict(model)``             sharded (DTensor) / plain
``optimizer.base``                 the base optimizer (momentum, Adam moments,  sharded, keyed by the
                                   ``param_groups``) via                        parameters' names
                                   ``get_optimizer_state_dict``
``optimizer.directions``           lazy ascent's kept directions (TSAM         sharded like the
                                   ``refresh_every > 1``), one tensor per       parameters
                                   sample and parameter name
``optimizer.own``                  everything else of ``optimizer.state_dict()`` one pickled blob, the
                                   (hyper-parameters, seed, the noise           same on every rank
                                   generator's state, step count, the auto-
                                   tilt state)
``extra``                          the caller's own small metadata (epoch...)  one pickled blob
=================================  ==========================================  ==========================

The noise generator's state is the same on every rank (sharded runs draw every parameter's noise at
full size, see :mod:`tiltedsam.sharded`), so it is replicated state and the blob is enough.
Parameter names drop the ``module.`` prefix of DDP and the ``_orig_mod.`` prefix of ``torch.compile``,
so a checkpoint written under DDP loads under FSDP2 and the other way round.

Use :func:`save` / :func:`load` around a whole checkpoint; the same functions work in one process
without ``torch.distributed`` (DCP then reads and writes alone).
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
from torch import Tensor, nn

from .base import PerturbationOptimizer

__all__ = ["save", "load", "CHECKPOINT_FORMAT"]

#: recorded in the ``own`` blob; a checkpoint of another format is rejected with its name
CHECKPOINT_FORMAT = "tiltedsam.dcp/1"


def _pack(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _unpack(blob: Any) -> Any:
    """The plain data (dicts, lists, numbers, strings, tensors) :func:`_pack` wrote; files are data, never
    code, so anything else in the blob is refused (``weights_only=True``)."""
    if isinstance(blob, io.BytesIO):
        blob = blob.getvalue()
    return torch.load(io.BytesIO(blob), weights_only=True)


def _clean_name(name: str) -> str:
    parts = [part for part in name.split(".") if part not in ("module", "_orig_mod")]
    return ".".join(parts)


def _parameter_names(model: nn.Module, optimizer: PerturbationOptimizer) -> list[str]:
    """The names (as :func:`_clean_name` writes them) of the optimizer's trainable parameters, in its order."""
    names = {id(p): _clean_name(name) for name, p in model.named_parameters()}
    params = optimizer._params()
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"the optimizer holds {len(missing)} parameter(s) that are not parameters of model "
                         f"(positions {missing[:5]}); pass the module the optimizer was built on")
    return [names[id(p)] for p in params]


def _split_own_state(model: nn.Module, optimizer: PerturbationOptimizer) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``optimizer.state_dict()`` without the base optimizer, with lazy-ascent directions taken out as
    tensors keyed ``"<sample>.<parameter name>"`` (their places in the blob hold ``True``/``None``)."""
    own = optimizer.state_dict()
    own.pop("base_optimizer")
    tensors: dict[str, Tensor] = {}
    sampler_state = own.get("extra", {}).get("sampler")
    if sampler_state and sampler_state.get("directions") is not None:
        names = _parameter_names(model, optimizer)
        layout = []
        for j, sample in enumerate(sampler_state["directions"]):
            row = []
            for name, direction in zip(names, sample):
                row.append(direction is not None)
                if direction is not None:
                    tensors[f"{j}.{name}"] = direction
            layout.append(row)
        sampler_state["directions"] = layout
    return own, tensors


def save(checkpoint_dir: str | os.PathLike[str], model: nn.Module, optimizer: PerturbationOptimizer,
         extra: dict[str, Any] | None = None) -> None:
    """Write a DCP checkpoint of ``model`` and ``optimizer`` into ``checkpoint_dir`` (every rank calls it).

    ``extra``: small picklable metadata saved alongside (epoch, step, RNG states of the data loader).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    own, directions = _split_own_state(model, optimizer)
    own["checkpoint_format"] = CHECKPOINT_FORMAT
    state = {
        "model": get_model_state_dict(model),
        "optimizer": {
            "base": get_optimizer_state_dict(model, optimizer.base_optimizer),
            "directions": directions,
            "own": _pack(own),
        },
        "extra": _pack(dict(extra or {})),
    }
    dcp.save(state, checkpoint_id=os.fspath(checkpoint_dir))


def load(checkpoint_dir: str | os.PathLike[str], model: nn.Module, optimizer: PerturbationOptimizer) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` into ``model`` and ``optimizer`` in their current layout
    (any number of ranks, FSDP2, DDP or a plain module); returns the ``extra`` metadata.

    The parameters, the base optimizer's state, the noise generator, the step count and the optimizer's
    own state (auto tilt, lazy ascent's directions) continue exactly where the saved run stopped.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    path = os.fspath(checkpoint_dir)
    # 1. the small blobs: they say which sharded entries exist
    blobs: dict[str, Any] = {"optimizer": {"own": b""}, "extra": b""}
    dcp.load(blobs, checkpoint_id=path)
    own = _unpack(blobs["optimizer"]["own"])
    extra = _unpack(blobs["extra"])
    if not isinstance(own, dict) or own.get("checkpoint_format") != CHECKPOINT_FORMAT:
        found = own.get("checkpoint_format") if isinstance(own, dict) else type(own).__name__
        raise ValueError(f"{path} is not a tiltedsam DCP checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    if own.get("optimizer") != type(optimizer).__name__:
        raise ValueError(f"{path} holds a {own.get('optimizer')!r} optimizer, cannot load it into "
                         f"{type(optimizer).__name__}")
    # 2. the sharded entries, read into templates laid out like this run's parameters
    params = optimizer._params()
    names = _parameter_names(model, optimizer)
    by_name = dict(zip(names, params))
    sampler_state = own.get("extra", {}).get("sampler")
    directions: dict[str, Tensor] = {}
    if sampler_state and sampler_state.get("directions") is not None:
        for j, row in enumerate(sampler_state["directions"]):
            for name, present in zip(names, row):
                if present:
                    directions[f"{j}.{name}"] = torch.zeros_like(by_name[name].detach())
    state = {
        "model": get_model_state_dict(model),
        "optimizer": {"base": get_optimizer_state_dict(model, optimizer.base_optimizer), "directions": directions},
    }
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    # 3. the optimizer: own state first (it reloads the base with its current state), then the base's
    if sampler_state and sampler_state.get("directions") is not None:
        sampler_state["directions"] = [
            [directions[f"{j}.{name}"] if present else None for name, present in zip(names, row)]
            for j, row in enumerate(sampler_state["directions"])]
    own.pop("checkpoint_format")
    optimizer.load_state_dict({**own, "base_optimizer": optimizer.base_optimizer.state_dict()})
    set_optimizer_state_dict(model, optimizer.base_optimizer, state["optimizer"]["base"])
    optimizer._link_base()  # the base rebuilt its param_groups list: share it again
    return extra
