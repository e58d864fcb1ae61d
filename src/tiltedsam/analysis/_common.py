"""Plumbing shared by the analyses: data batches, the exact save/restore of a model, losses, gradients.

Every analysis runs inside :func:`preserved_model_state`, which snapshots all parameters and buffers
and the train/eval flag of every sub-module, sets the requested mode, and restores all of it on exit
(also on error). Parameters are only ever moved in place, and gradients are taken with
``torch.autograd.grad``, so ``.grad`` fields are never touched either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "MODES",
    "LossFn",
    "Batch",
    "preserved_model_state",
    "trainable_parameters",
    "as_batches",
    "take_batches",
    "mean_loss",
    "mean_gradient",
    "check_positive_int",
    "check_mode",
    "progress_bar",
]

MODES = ("eval", "train")
Mode = Literal["eval", "train"]
LossFn = Callable[[Any, Any], Tensor]
Batch = tuple[Any, Any]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"mode must be 'eval' (BatchNorm running statistics, no dropout) or 'train' (batch statistics, "
            f"dropout active), got {mode!r}"
        )
    return mode


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_nonnegative_float(name: str, value: Any, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0 or (math.isinf(value) and not allow_inf):
        allowed = "a number >= 0 (inf allowed)" if allow_inf else "a finite number >= 0"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def trainable_parameters(model: nn.Module, params: Sequence[Tensor] | None = None) -> list[Tensor]:
    """The parameters an analysis perturbs / differentiates: ``params`` or every ``requires_grad`` one."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise ValueError("the model has no parameter with requires_grad=True to analyse (pass params=...)")
    return chosen


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({t.device.index or 0 for t in list(model.parameters()) + list(model.buffers()) if t.is_cuda})


@contextlib.contextmanager
def preserved_model_state(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Run a block with ``model`` in ``mode`` and give everything back exactly afterwards.

    Restored on exit: every parameter and buffer value (bit-exact copy of a snapshot, so BatchNorm
    statistics updated in ``mode="train"`` are rolled back), buffer/parameter objects a module may
    have re-assigned, the ``training`` flag of *every* sub-module (a model that was partly in eval
    mode stays so), and the global RNG streams on the model's devices (dropout in train mode draws
    from them; the analyses' own noise comes from seeded private generators).
    """
    check_mode(mode)
    slots: list[tuple[dict[str, Any], str, Tensor, Tensor]] = []
    seen: set[int] = set()
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is None:
                    continue
                # a shared tensor is restored once; its other slots only need the object back
                copy = tensor if id(tensor) in seen else tensor.detach().clone()
                seen.add(id(tensor))
                slots.append((store, name, tensor, copy))
    flags = [(module, module.training) for module in model.modules()]
    model.train(mode == "train")
    try:
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            yield model
    finally:
        with torch.no_grad():
            for store, name, original, copy in slots:
                store[name] = original
                if copy is not original:
                    original.copy_(copy)
        for module, flag in flags:
            module.training = flag


class ResultMixin:
    """``to_dict()`` for the result dataclasses (plain values, ready for JSON)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


# ---------------------------------------------------------------------------------------------- data
def _is_single_batch(data: Any) -> bool:
    # (inputs, targets) with tensor targets; a list of two batches has a tuple/list second element
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], Tensor)


def as_batches(data: Any, max_batches: int | None = None, *, _warn_shuffle: bool = True) -> Iterable[Batch]:
    """A re-iterable over ``(inputs, targets)`` batches: ``data`` is one batch, a list of batches or a
    DataLoader (any re-iterable of batches). ``max_batches`` keeps only the first ones.

    Use a non-shuffling loader (or :func:`take_batches`): the Hessian analyses need the same loss at
    every product, and the neighbourhood statistics should differ only by the noise.
    """
    if max_batches is not None:
        check_positive_int("max_batches", max_batches)
    if _is_single_batch(data):
        return [tuple(data)]
    if isinstance(data, Tensor) or data is None or not hasattr(data, "__iter__"):
        raise ValueError(
            "data must be an (inputs, targets) batch with tensor targets, a list of such batches or a DataLoader, "
            f"got {type(data).__name__}"
        )
    sampler = getattr(data, "sampler", None)
    if _warn_shuffle and max_batches is not None and isinstance(sampler, torch.utils.data.RandomSampler):
        import warnings

        warnings.warn(
            "a shuffling DataLoader with max_batches sees different samples on every pass; use "
            "tiltedsam.analysis.take_batches(loader, max_batches) to fix the batches once",
            stacklevel=3,
        )

    class _Limited:
        def __iter__(self) -> Iterator[Batch]:
            for index, batch in enumerate(data):
                if max_batches is not None and index >= max_batches:
                    return
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise ValueError(
                        f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                    )
                yield tuple(batch)

    return _Limited()


def take_batches(data: Any, max_batches: int | None = None) -> list[Batch]:
    """Materialise (at most ``max_batches``) batches of ``data`` once, so every analysis and every
    noise draw sees exactly the same samples even when the loader shuffles."""
    return list(as_batches(data, max_batches, _warn_shuffle=False))


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {key: _to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(value, device) for value in obj)
    return obj


def _batch_size(targets: Any) -> int:
    if isinstance(targets, Tensor):
        return 1 if targets.dim() == 0 else int(targets.shape[0])
    return len(targets)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple/list, ``model(**x)`` for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def weighted_batches(model: nn.Module, batches: Iterable[Batch]) -> Iterator[tuple[Any, Any, int]]:
    """Yield ``(inputs, targets, batch_size)`` moved to the model's device."""
    device = _model_device(model)
    for inputs, targets in batches:
        yield _to_device(inputs, device), _to_device(targets, device), _batch_size(targets)


def _scalar_loss(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn(outputs, targets) must return the scalar mean loss, got {shape}")
    return loss.reshape(())


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch]) -> float:
    """Sample-weighted mean of ``loss_fn`` over the batches at the current parameters (float64 sum).

    ``loss_fn`` returns the mean over its batch, so batch ``b`` counts ``n_b / sum n``.
    """
    total, count = 0.0, 0
    for inputs, targets, size in weighted_batches(model, batches):
        total += float(_scalar_loss(loss_fn(call_model(model, inputs), targets)).double()) * size
        count += size
    if count == 0:
        raise ValueError("data yielded no samples")
    return total / count


def mean_gradient(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], params: Sequence[Tensor]) -> list[Tensor]:
    """Gradient of the sample-weighted mean loss, by ``torch.autograd.grad`` (``.grad`` untouched)."""
    grads = [torch.zeros_like(p) for p in params]
    count = 0
    for inputs, targets, size in weighted_batches(model, batches):
        with torch.enable_grad():
            loss = _scalar_loss(loss_fn(call_model(model, inputs), targets))
            parts = torch.autograd.grad(loss, params, allow_unused=True)
        for acc, part in zip(grads, parts):
            if part is not None:
                acc.add_(part, alpha=size)
        count += size
    if count == 0:
        raise ValueError("data yielded no samples")
    for acc in grads:
        acc.div_(count)
    return grads


def progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    """tqdm bar: ``progress=None`` shows it only on a terminal and only once a run lasts over 2 s."""
    from tqdm.auto import tqdm

    if progress is None:
        return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), delay=2.0, leave=False)
    return tqdm(total=total, desc=desc, disable=not progress, leave=False)
