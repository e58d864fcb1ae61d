r"""Parameter-list operations that work alike for plain tensors and for sharded ``DTensor`` s (FSDP2).

* **local moves**: the snapshot, the moves to ``theta + eps`` and the bit-exact restore act on the local
  shards only (:func:`snapshot`, :func:`restore`, :func:`add_`, unwrapping with ``to_local()``);
* **global numbers**: :func:`global_norm` and :func:`global_dot` sum the local parts of all tensors and
  all-reduce that one number once per mesh dimension the tensors are sharded over;
* **the same noise**: :func:`normal_shards` draws every parameter's noise at its full shape in the
  unsharded order and keeps this rank's slice, so a sharded run draws bit for bit the unsharded noise
  and every rank's generator stays in the same state.

Plain tensors and replicated ``DTensor`` s contribute their local values without communication.
:mod:`tiltedsam.functional` dispatches here when a list's first tensor is a DTensor (:func:`is_sharded`).
The full picture is in ``docs/distributed.md`` ("What makes FSDP2 correct").
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from torch import Tensor

__all__ = ["is_dtensor", "is_sharded", "local", "snapshot", "restore", "add_", "global_norm", "global_dot",
           "shard_like", "normal_shards", "filter_norms"]


_dtensor_type: Any = None  # DTensor, looked up once its module is loaded


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a :class:`~torch.distributed.tensor.DTensor`. Imports nothing: no DTensor can
    exist before ``torch.distributed.tensor`` is loaded, so until then the answer is False."""
    global _dtensor_type
    if _dtensor_type is None:
        module = sys.modules.get("torch.distributed.tensor")
        if module is None:
            return False
        _dtensor_type = module.DTensor
    return isinstance(tensor, _dtensor_type)


def is_sharded(tensors: Sequence[Any]) -> bool:
    """Whether the parameter-shaped list ``tensors`` takes the sharded path: its first entry that is not
    ``None`` is a DTensor. One type check, so plain lists cost nothing more."""
    for t in tensors:
        if t is not None:
            return is_dtensor(t)
    return False


def local(tensor: Tensor) -> Tensor:
    """This rank's shard of ``tensor`` (a tensor sharing its storage), or ``tensor`` itself if it is plain."""
    if is_dtensor(tensor):
        with torch.no_grad():  # no autograd view: in-place writes reach the parameter's own storage
            return tensor.to_local()
    return tensor


@torch.no_grad()
def snapshot(params: Sequence[Tensor]) -> list[Tensor]:
    """Detached copies of the local shards of ``params`` (the whole tensors when they are plain)."""
    return [local(p).detach().clone() for p in params]


@torch.no_grad()
def restore(params: Sequence[Tensor], saved: Sequence[Tensor]) -> None:
    """Copy a :func:`snapshot` back into ``params``, bit-exactly (unlike subtracting a move again)."""
    if params:
        torch._foreach_copy_([local(p) for p in params], [local(s) for s in saved])


@torch.no_grad()
def add_(params: Sequence[Tensor], deltas: Sequence[Tensor | None], alpha: float = 1.0) -> None:
    """``p += alpha * d`` for every pair, on the local shards (``None`` deltas are skipped)."""
    pairs = [(local(p), local(d)) for p, d in zip(params, deltas) if d is not None]
    if pairs:
        torch._foreach_add_([p for p, _ in pairs], [d.to(p.device, p.dtype) for p, d in pairs], alpha=alpha)


def _shard_groups(tensor: Tensor) -> tuple[Any, ...]:
    """The process groups over which ``tensor``'s local parts must be summed (empty when it is whole here)."""
    if not is_dtensor(tensor):
        return ()
    from torch.distributed.tensor import Replicate, Shard

    mesh = tensor.device_mesh
    groups = []
    for dim, placement in enumerate(tensor.placements):
        if isinstance(placement, Shard):
            groups.append(mesh.get_group(dim))
        elif not isinstance(placement, Replicate):
            raise ValueError(f"expected a DTensor sharded (Shard) or replicated (Replicate) on each mesh dimension, "
                             f"got placements {tensor.placements}")
    return tuple(groups)


def _reduced_sum(parts: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """``sum_i parts_i`` where ``parts`` are ``(value, like)``: float64 scalars (or equal-length vectors)
    each summed across the shard groups of its ``like`` tensor. One all-reduce per distinct group set."""
    by_groups: dict[tuple[Any, ...], Tensor] = {}
    for value, like in parts:
        key = _shard_groups(like)
        by_groups[key] = value if key not in by_groups else by_groups[key] + value
    import torch.distributed as dist

    total: Tensor | None = None
    for groups, value in by_groups.items():
        for group in groups:
            dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
        total = value if total is None else total + value
    assert total is not None
    return total


def global_norm(tensors: Sequence[Tensor | None]) -> Tensor:
    r"""L2 norm of the concatenation of ``tensors`` over all ranks' shards, as a 0-dim tensor.

    .. math:: \lVert x\rVert = \Big(\sum_r \sum_i \lVert x_i^{(r)}\rVert^2\Big)^{1/2}

    with ``x_i^(r)`` rank ``r``'s shard of tensor ``i`` (replicated tensors counted once). The local
    squares are summed in float64 and all-reduced once; the result has the tensors' dtype and device.
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return torch.zeros(())
    parts = [(torch.linalg.vector_norm(local(t), 2, dtype=torch.float64).square().reshape(1), t) for t in present]
    first = local(present[0])
    return _reduced_sum(parts).sqrt().reshape(()).to(first.device, first.dtype)


def global_dot(first: Sequence[Tensor | None], second: Sequence[Tensor | None]) -> float:
    """Inner product of two parameter-shaped lists read as flat vectors over all shards (``None`` counts as
    zero), in float64; one all-reduce."""
    parts = []
    for a, b in zip(first, second):
        if a is not None and b is not None:
            parts.append((torch.sum(local(a) * local(b).to(local(a).device), dtype=torch.float64).reshape(1), a))
    if not parts:
        return 0.0
    return float(_reduced_sum(parts))


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """This rank's part of the full-size tensor ``full``, laid out as ``like`` (a DTensor with the same
    global shape); ``full`` itself when ``like`` is a plain tensor."""
    if not is_dtensor(like):
        return full
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(like.shape, like.device_mesh, like.placements)
    piece = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))].clone()
    return DTensor.from_local(piece, like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


@torch.no_grad()
def normal_shards(params: Sequence[Tensor], generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
    r"""``(noise, norm)``: ``N(0, I)`` noise for every parameter, drawn at full size (the numbers of an
    unsharded run), laid out like ``params[i]`` (this rank's shard), and the global L2 norm of the full
    draw (computed locally, as :func:`torch.nn.utils.get_total_norm` does: no collective).
    """
    device = generator.device
    noise: list[Tensor] = []
    norms: list[Tensor] = []
    for p in params:
        full = torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype).to(local(p).device)
        norms.append(torch._foreach_norm([full], 2.0)[0])
        noise.append(shard_like(full, p))
        del full
    norm = torch.linalg.vector_norm(torch.stack(norms), 2.0) if norms else torch.zeros(())
    return noise, norm


@torch.no_grad()
def filter_norms(params: Sequence[Tensor]) -> list[Tensor]:
    r"""Per-filter norms (see :func:`tiltedsam.functional.filter_norms`), broadcastable against each
    parameter's *local* shard. Rows sharded along dimension 0 are whole on their rank; every other case
    sums local squares with one all-reduce per shard-group set for all parameters together.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    squares: list[Tensor] = []
    by_groups: dict[tuple[Any, ...], list[int]] = {}  # filters split across ranks, by shard-group set
    for i, p in enumerate(params):
        shard = local(p)
        rows = shard.reshape(shard.shape[0], -1) if p.dim() >= 2 else shard.reshape(1, -1)
        squares.append(torch.linalg.vector_norm(rows, 2, dim=1, dtype=torch.float64).square())
        rows_whole = p.dim() >= 2 and all(not isinstance(pl, Shard) or pl.dim == 0
                                          for pl in (p.placements if is_dtensor(p) else ()))
        if is_dtensor(p) and _shard_groups(p) and not rows_whole:
            by_groups.setdefault(_shard_groups(p), []).append(i)
    for groups, members in by_groups.items():  # one flat buffer, so one all-reduce, per shard-group set
        flat = torch.cat([squares[i] for i in members])
        for group in groups:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for i, piece in zip(members, torch.split(flat, [squares[i].numel() for i in members])):
            squares[i] = piece
    result = []
    for p, sq in zip(params, squares):
        norms = sq.sqrt().to(local(p).dtype)
        result.append(norms.reshape((-1,) + (1,) * (p.dim() - 1)) if p.dim() >= 2 else norms.reshape(()))
    return result
