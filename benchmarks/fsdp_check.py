"""FSDP2 check of every registered optimizer: sharded steps against one unsharded process, bf16 mixed precision.

Part of ``benchmarks/gpu_check.sh``. With two or more GPUs visible it runs two ranks (``nccl``, one GPU
each): a real 2-GPU FSDP2 step. With one GPU it runs one rank (``nccl``, a 1-GPU FSDP2 smoke step: the
same code path, shards of size one). ``--device cpu`` runs two ``gloo`` ranks on the CPU (the dry run).

On every rank, for every registered optimizer, a small MLP is sharded with ``fully_shard`` and trained
for ``--steps`` steps (closure API, float32) on the rank's half of a fixed global batch; rank 0 then
repeats the run in one unsharded process on the whole batch (``distributed=False``) and compares the
full parameters. Then the same sharded run with ``MixedPrecisionPolicy(param_dtype=bfloat16,
reduce_dtype=float32)`` through the manual API: its parameters must stay float32, be finite, and lie
within 10 % of the run's movement of the float32 result. Exit status 1 if any check fails.

Usage::

    python benchmarks/fsdp_check.py --device cuda [--nproc N] [--steps 2] [--json fsdp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

GLOBAL_BATCH = 32
FP32_TOLERANCE = 1e-4  # absolute, on parameters of size ~0.1: float rounding of a different reduction order


def make_model(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 257), nn.Tanh(), nn.Linear(257, 10)).to(device)


def full(model: nn.Module) -> list[torch.Tensor]:
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().float().cpu().clone() for p in model.parameters()]


def run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, api: str, **options: Any) -> None:
    from tiltedsam.optim.registry import create_optimizer

    torch.manual_seed(1)
    optimizer = create_optimizer(name, model.parameters(), model=model, lr=0.1, momentum=0.9, seed=3, **options)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        if api == "closure":
            def closure(evaluation: Any) -> torch.Tensor:
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss
            optimizer.step(closure)
        else:
            for evaluation in optimizer.manual_step():
                loss = loss_fn(model(x), y)
                loss.backward()
                evaluation.record(loss)


def _worker(rank: int, world: int, backend: str, init_file: str, out_dir: str, steps: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from tiltedsam.optim.registry import REGISTRY

    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh(device.type, (world,))
    try:
        generator = torch.Generator().manual_seed(2)
        x_all = torch.randn(GLOBAL_BATCH, 64, generator=generator).to(device)
        y_all = torch.randint(0, 10, (GLOBAL_BATCH,), generator=generator).to(device)
        size = GLOBAL_BATCH // world
        x, y = x_all[rank * size:(rank + 1) * size], y_all[rank * size:(rank + 1) * size]
        rows = []
        for name in REGISTRY:
            sharded: dict[str, list[torch.Tensor]] = {}
            for precision in ("float32", "bfloat16"):
                policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                    if precision == "bfloat16" else MixedPrecisionPolicy()
                model = make_model(device)
                fully_shard(model[0], mesh=mesh, mp_policy=policy)
                fully_shard(model[2], mesh=mesh, mp_policy=policy)
                fully_shard(model, mesh=mesh, mp_policy=policy)
                run(name, model, x, y, steps, "closure" if precision == "float32" else "manual")
                sharded[precision] = full(model)
                if precision == "bfloat16":
                    dtypes = sorted({str(p.to_local().dtype) for p in model.parameters()})
            if rank == 0:
                reference = make_model(device)
                start = full(reference)
                run(name, reference, x_all, y_all, steps, "closure", distributed=False)
                want = full(reference)
                fp32 = max(float((a - b).abs().max()) for a, b in zip(sharded["float32"], want))
                bf16 = max(float((a - b).abs().max()) for a, b in zip(sharded["bfloat16"], want))
                moved = max(float((a - b).abs().max()) for a, b in zip(want, start))
                finite = all(bool(torch.isfinite(p).all()) for p in sharded["bfloat16"])
                ok = fp32 <= FP32_TOLERANCE and finite and bf16 <= 0.1 * moved and dtypes == ["torch.float32"]
                rows.append({"optimizer": name, "fp32_max_abs_diff": fp32, "bf16_max_abs_diff": bf16,
                             "moved": moved, "shard_dtypes": dtypes, "ok": ok})
        if rank == 0:
            Path(out_dir, "rows.json").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--nproc", type=int, default=None, help="ranks (default: min(2, GPUs) on CUDA, 2 on CPU)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but torch sees no CUDA device")
        backend, nproc = "nccl", args.nproc or min(2, torch.cuda.device_count())
        if nproc > torch.cuda.device_count():
            parser.error(f"--nproc {nproc} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    else:
        backend, nproc = "gloo", args.nproc or 2
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(nproc, backend, str(Path(out_dir) / "init"), out_dir, args.steps),
                           nprocs=nproc, start_method="spawn")
        rows = json.loads(Path(out_dir, "rows.json").read_text())
    kind = {1: "1-GPU FSDP2 smoke step"}.get(nproc, f"{nproc}-rank FSDP2") if backend == "nccl" else \
        f"{nproc} CPU ranks (gloo)"
    print(f"FSDP2 check: {kind}, {args.steps} steps per optimizer\n")
    print("| optimizer | fp32: max abs diff to one process | bf16: max abs diff | movement | ok |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['optimizer']} | {row['fp32_max_abs_diff']:.2e} | {row['bf16_max_abs_diff']:.2e} | "
              f"{row['moved']:.3f} | {'yes' if row['ok'] else 'NO'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"nproc": nproc, "backend": backend, "steps": args.steps,
                                               "rows": rows}, indent=2) + "\n")
    failed = [row["optimizer"] for row in rows if not row["ok"]]
    print(f"\n{'all ok' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
