"""Overhead of two-process DDP (gloo, CPU) against one process, for TSAM and SAM steps.

The same global batch of random 3x32x32 images and the harness's ``small_cnn`` (~99k parameters),
one torch thread per process. Four set-ups, each timed over ``--steps`` optimizer steps after two
warm-up steps, best of ``--repeats`` (the median is noisier on a shared machine):

* ``1 process``: the whole global batch in one process;
* ``2 x DDP``: two ranks with half the batch each, DDP gradient averaging plus the optimizer's
  loss all-reduces (the library default);
* ``2 x DDP local ascent``: the same with m-sharpness (ascent evaluations under ``no_sync``);
* ``2 x no communication``: two processes with half the batch each and no DDP, no collectives:
  the compute-only lower bound of a two-process step, so ``2 x DDP - 2 x no communication`` is
  the cost of the collectives and of waiting for the slower rank.

On a machine shared with other work the step times are noisy; so the script also times the
collectives themselves in a two-process group (``--collectives``): the all-reduce of a gradient
the size of the model and the one-number loss all-reduce, and from them the communication of one
TSAM step (``2 s`` gradient syncs + ``s`` loss all-reduces) and one SAM step (2 + 1).

Usage::

    python benchmarks/ddp_overhead.py --steps 20 --repeats 3 [--json results.json]
    python benchmarks/ddp_overhead.py --collectives-only

Prints Markdown tables (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tiltedsam.harness.models import SmallCNN
from tiltedsam.optim import SAM, TSAM
from tiltedsam.optim.distributed import DistributedSync

WARMUP_STEPS = 2


def make_batch(global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(global_batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (global_batch,),
                                                                                      generator=generator)


def time_steps(kind: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, **options: Any) -> float:
    """Seconds per optimizer step (after warm-up steps), on this process."""
    torch.manual_seed(1)
    if kind == "tsam":
        optimizer = TSAM(net.parameters(), lr=0.01, momentum=0.9, num_samples=3, model=net, seed=0, **options)
    else:
        optimizer = SAM(net.parameters(), lr=0.01, momentum=0.9, model=net, **options)
    loss_fn = nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        loss = loss_fn(net(x), y)
        loss.backward()
        return loss

    for _ in range(WARMUP_STEPS):
        optimizer.step(closure)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step(closure)
    if dist.is_initialized():
        dist.barrier()  # the step time of a DDP run is the slowest rank's
    return (time.perf_counter() - start) / steps


def model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(3, 10, (16, 32, 64, 128), True)


def _rank(rank: int, world_size: int, init_method: str, kind: str, mode: str, global_batch: int, steps: int,
          out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        x, y = make_batch(global_batch)
        share = global_batch // world_size
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        if mode == "ddp":
            seconds = time_steps(kind, nn.parallel.DistributedDataParallel(model()), x, y, steps)
        elif mode == "ddp_local_ascent":
            seconds = time_steps(kind, nn.parallel.DistributedDataParallel(model()), x, y, steps,
                                 distributed=DistributedSync(local_ascent=True))
        else:  # no communication at all during the timed steps
            seconds = time_steps(kind, model(), x, y, steps, distributed=False)
        if rank == 0:
            Path(out_file).write_text(str(seconds))
    finally:
        dist.destroy_process_group()


def _time_collectives(rank: int, world_size: int, init_method: str, repeats: int, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        num_parameters = sum(p.numel() for p in model().parameters())
        timings = {}
        for name, tensor in (("gradient all-reduce", torch.zeros(num_parameters)),
                             ("loss all-reduce", torch.zeros(1, dtype=torch.float64))):
            for _ in range(5):
                dist.all_reduce(tensor)
            samples = []
            for _ in range(repeats):
                dist.barrier()
                start = time.perf_counter()
                dist.all_reduce(tensor)
                samples.append(time.perf_counter() - start)
            timings[name] = statistics.median(samples)
        if rank == 0:
            Path(out_file).write_text(json.dumps({"num_parameters": num_parameters, **timings}))
    finally:
        dist.destroy_process_group()


def run_collectives(repeats: int = 200) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "collectives.json")
        mp.spawn(_time_collectives, args=(2, Path(tmp, "rendezvous").as_uri(), repeats, out_file), nprocs=2,
                 join=True)
        return json.loads(Path(out_file).read_text())


def print_collectives(timings: dict[str, float], num_samples: int = 3) -> None:
    grad, loss = timings["gradient all-reduce"], timings["loss all-reduce"]
    print("| collective (2 gloo processes, median) | ms |\n|---|---|")
    print(f"| gradient all-reduce ({timings['num_parameters']} float32) | {1000 * grad:.3f} |")
    print(f"| loss all-reduce (1 float64) | {1000 * loss:.3f} |")
    print(f"| TSAM step, s={num_samples}: {2 * num_samples} gradient + {num_samples} loss | "
          f"{1000 * (2 * num_samples * grad + num_samples * loss):.3f} |")
    print(f"| SAM step: 2 gradient + 1 loss | {1000 * (2 * grad + loss):.3f} |")


def run_two(kind: str, mode: str, global_batch: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "seconds")
        init_method = Path(tmp, "rendezvous").as_uri()
        mp.spawn(_rank, args=(2, init_method, kind, mode, global_batch, steps, out_file), nprocs=2, join=True)
        return float(Path(out_file).read_text())


def run_one(kind: str, global_batch: int, steps: int) -> float:
    torch.set_num_threads(1)
    x, y = make_batch(global_batch)
    return time_steps(kind, model(), x, y, steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--optimizers", default="tsam,sam")
    parser.add_argument("--json", help="also write the timings here")
    parser.add_argument("--collectives-only", action="store_true", help="only time the collectives")
    args = parser.parse_args(argv)
    collectives = run_collectives()
    print_collectives(collectives)
    print()
    if args.collectives_only:
        return 0
    setups = [("1 process", None), ("2 x DDP", "ddp"), ("2 x DDP local ascent", "ddp_local_ascent"),
              ("2 x no communication", "none")]
    results: dict[str, dict[str, list[float]]] = {}
    for kind in args.optimizers.split(","):
        results[kind] = {name: [] for name, _ in setups}
        for repeat in range(args.repeats):  # interleaved, so a burst of load elsewhere hits all set-ups
            for name, mode in setups:
                seconds = run_one(kind, args.batch, args.steps) if mode is None else \
                    run_two(kind, mode, args.batch, args.steps)
                results[kind][name].append(seconds)
                print(f"{kind} {name} repeat {repeat}: {1000 * seconds:.1f} ms/step", file=sys.stderr)
    print(f"| optimizer | {' | '.join(name for name, _ in setups)} | DDP / 1 process | collectives share |")
    print(f"|---|{'---|' * len(setups)}---|---|")
    for kind, timings in results.items():
        best = {name: min(values) for name, values in timings.items()}
        ratio = best["2 x DDP"] / best["1 process"]
        share = (best["2 x DDP"] - best["2 x no communication"]) / best["2 x DDP"]
        cells = " | ".join(f"{1000 * best[name]:.1f}" for name, _ in setups)
        print(f"| {kind} | {cells} | {ratio:.2f} | {100 * share:.0f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps({"batch": args.batch, "steps": args.steps, "torch": torch.__version__,
                                               "cpu_count": os.cpu_count(), "seconds_per_step": results,
                                               "collectives_seconds": collectives},
                                              indent=2) + "\n")
    print(f"(ms per step, best of {args.repeats}; global batch {args.batch}; {os.cpu_count()} CPU cores, "
          f"one thread per process; median spread: "
          + ", ".join(f"{k}/{n} {1000 * statistics.median(v):.1f}" for k, t in results.items() for n, v in t.items())
          + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
