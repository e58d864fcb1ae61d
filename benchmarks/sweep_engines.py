"""Wall time of the same 8-run sweep on the local engine and on a local Ray instance of the same size.

The grid: ``sgd`` and ``sam`` x seeds 0-3 on ``digits`` with the MLP (``--epochs`` epochs each, one
torch thread per run). The local engine runs it with ``--workers`` worker processes; Ray with as
many CPUs (``ray.init(num_cpus=workers)``) and one CPU per run. Both trains produce the same numbers
(checked here: every ``result.json`` equal apart from timings), so the difference is engine cost:

* ``Ray start`` is ``ray.init`` (once per sweep command when the command starts Ray itself; zero when
  it joins a running cluster with ``--address``), timed separately;
* ``overhead per run`` = (Ray sweep without start - local sweep) / runs: task submission, worker
  start-up and imports, the driver's bookkeeping.

Usage::

    python benchmarks/sweep_engines.py [--epochs 3] [--workers 2] [--repeats 1] [--json out.json]

Prints a Markdown table (seconds). On a machine shared with other work the times are noisy; the
load average at start and end is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def grid(out: Path, epochs: int, workers: int):
    from tiltedsam.harness.sweep import SweepConfig

    return SweepConfig(name="bench", out_dir=str(out), optimizers=["sgd", "sam"], seeds=[0, 1, 2, 3],
                       workers=workers, threads_per_worker=1, progress=False, cpus_per_run=1,
                       base={"data": {"name": "digits"}, "model": {"name": "mlp"},
                             "budget": {"kind": "epochs", "amount": epochs}, "run": {"num_threads": 1}})


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name: {k: v for k, v in json.loads(p.read_text()).items()
                            if k not in ("train_seconds", "wall_seconds")}
            for p in sorted(out.glob("runs/*/result.json"))}


def train_seconds(out: Path) -> float:
    return sum(json.loads(p.read_text())["train_seconds"] for p in out.glob("runs/*/result.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    from tiltedsam.harness.engines.ray_engine import run_sweep_on_ray
    from tiltedsam.harness.sweep import run_sweep

    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            local_out, ray_out = Path(tmp, f"local{repeat}"), Path(tmp, f"ray{repeat}")
            start = time.perf_counter()
            counts = run_sweep(grid(local_out, args.epochs, args.workers))
            local_wall = time.perf_counter() - start
            assert counts["done"] == 8, counts
            start = time.perf_counter()
            ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="warning", log_to_driver=False)
            ray_start = time.perf_counter() - start
            start = time.perf_counter()
            counts = run_sweep_on_ray(grid(ray_out, args.epochs, args.workers))
            ray_wall = time.perf_counter() - start
            ray.shutdown()
            assert counts["done"] == 8, counts
            assert results(local_out) == results(ray_out), "the engines disagree"
            rows.append({"local_s": local_wall, "ray_start_s": ray_start, "ray_sweep_s": ray_wall,
                         "local_train_s": train_seconds(local_out), "ray_train_s": train_seconds(ray_out),
                         "overhead_per_run_s": (ray_wall - local_wall) / 8})
    load_end = os.getloadavg()[0]
    print(f"8 runs (sgd, sam x seeds 0-3; digits, MLP, {args.epochs} epochs, 1 thread each), "
          f"{args.workers} workers / Ray CPUs; load average {load_start:.1f} at start, {load_end:.1f} at end\n")
    print("| repeat | local engine (s) | Ray start (s) | Ray sweep (s) | Ray total (s) | Ray overhead per run (s) "
          "| train time local / Ray (s, sum over runs) |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {i + 1} | {r['local_s']:.1f} | {r['ray_start_s']:.1f} | {r['ray_sweep_s']:.1f} | "
              f"{r['ray_start_s'] + r['ray_sweep_s']:.1f} | {r['overhead_per_run_s']:+.2f} | "
              f"{r['local_train_s']:.1f} / {r['ray_train_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "workers": args.workers, "rows": rows,
                                               "load": [load_start, load_end]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
