"""Per-rank memory of a perturbation optimizer under DDP and under FSDP2, side by side (2 gloo ranks, CPU).

A model of a few million parameters (an MLP, ``--width`` hidden units, 6.3 M parameters by default) is
trained for a few steps on each of ``--nproc`` ranks, once wrapped in DDP (every rank a full replica)
and once sharded with ``fully_shard`` (every rank one shard). For each optimizer the script counts, on
each rank, the bytes of the tensors alive:

* ``params``: the parameters this rank holds (a full copy under DDP, a ``1/N`` shard under FSDP2);
* ``grads``: the gradients after a backward pass (DDP: its full-size gradient buckets);
* ``base state``: the base optimizer's state (SGD momentum: one parameter-sized buffer);
* ``optimizer extra``: what the perturbation optimizer holds *on top* during a step, the maximum over
  its evaluations: the snapshot of ``theta`` and, for TSAM, the weighted gradient being accumulated
  (plus scratch such as the clean gradient of ESAM2/PGN).

Counting is a census of the live tensors' storages (``gc``), each storage once, taken before each
evaluation's forward pass (FSDP2 has then freed the all-gathered parameters of the previous one). It
measures what the Python side holds, device-independent; on CUDA ``torch.cuda.max_memory_allocated``
would add activations and communication buffers.

Usage::

    python benchmarks/fsdp_memory.py [--nproc 2] [--width 2048] [--optimizers sgd sam tsam] [--json out.json]

Prints a Markdown table (MiB per rank) with the FSDP2/DDP ratio of each column.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

MIB = 2**20


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 512))


def live_bytes(exclude: set[int] | None = None) -> int:
    """Bytes of all live tensor storages (each once; DTensor wrappers are skipped, their local tensors count)."""
    from tiltedsam.sharded import is_dtensor

    seen: set[int] = set(exclude or ())
    total = 0
    with warnings.catch_warnings():  # touching every live object trips deprecation warnings of unrelated ones
        warnings.simplefilter("ignore")
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in objects:
        if isinstance(obj, torch.Tensor) and not is_dtensor(obj) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
    return total


def storages_bytes(tensors: list[torch.Tensor]) -> int:
    from tiltedsam.sharded import local

    seen: dict[int, int] = {}
    for t in tensors:
        storage = local(t).untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measure(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 2) -> dict[str, float]:
    from tiltedsam.optim.registry import create_optimizer

    optimizer = create_optimizer(name, model.parameters(), model=model, lr=0.01, momentum=0.9, seed=0)
    loss_fn = nn.MSELoss()
    params = list(model.parameters())
    for _ in range(steps - 1):  # the base state exists after the first step
        for evaluation in optimizer.manual_step():
            loss = loss_fn(model(x), y)
            loss.backward()
            evaluation.record(loss)
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    baseline = live_bytes()
    extra = 0
    grads = 0
    for evaluation in optimizer.manual_step():
        gc.collect()
        extra = max(extra, live_bytes() - baseline)  # grads are None here: what the optimizer keeps
        loss = loss_fn(model(x), y)
        loss.backward()
        grads = max(grads, storages_bytes([p.grad for p in params if p.grad is not None]))
        evaluation.record(loss)
    state = [t for s in optimizer.base_optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return {"params": storages_bytes(params) / MIB, "grads": grads / MIB,
            "base state": storages_bytes(state) / MIB, "optimizer extra": extra / MIB}


def _worker(rank: int, world: int, init_file: str, out_dir: str, width: int, names: list[str]) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        generator = torch.Generator().manual_seed(rank)
        x, y = torch.randn(32, 512, generator=generator), torch.randn(32, 512, generator=generator)
        rows: dict[str, Any] = {}
        for name in names:
            ddp = DistributedDataParallel(make_model(width))
            rows["ddp", name] = measure(name, ddp, x, y)
            del ddp
            model = make_model(width)
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            rows["fsdp", name] = measure(name, model, x, y)
            del model
            gc.collect()
        torch.save(rows, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--width", type=int, default=2048, help="hidden width (2048: 6.3 M parameters)")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "sam", "tsam"])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.nproc < 2:
        parser.error(f"--nproc must be >= 2, got {args.nproc}")
    count = sum(p.numel() for p in make_model(args.width).parameters())
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(args.nproc, str(Path(out_dir) / "init"), out_dir, args.width,
                                          args.optimizers), nprocs=args.nproc, start_method="spawn")
        ranks = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(args.nproc)]
    columns = ["params", "grads", "base state", "optimizer extra"]
    print(f"{count / 1e6:.2f} M parameters ({count * 4 / MIB:.1f} MiB in float32), {args.nproc} ranks; "
          "MiB per rank (the largest rank), FSDP2 / DDP in brackets\n")
    print("| optimizer | layout | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    table = []
    for name in args.optimizers:
        worst = {kind: {c: max(r[kind, name][c] for r in ranks) for c in columns} for kind in ("ddp", "fsdp")}
        for kind, label in (("ddp", "DDP"), ("fsdp", "FSDP2")):
            cells = []
            for c in columns:
                value = worst[kind][c]
                ratio = "" if kind == "ddp" or worst["ddp"][c] == 0 else f" ({value / worst['ddp'][c]:.2f})"
                cells.append(f"{value:.1f}{ratio}")
            print(f"| {name} | {label} | " + " | ".join(cells) + " |")
            table.append({"optimizer": name, "layout": label, **{c: round(worst[kind][c], 3) for c in columns}})
    if args.json:
        Path(args.json).write_text(json.dumps({"parameters": count, "nproc": args.nproc, "rows": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
