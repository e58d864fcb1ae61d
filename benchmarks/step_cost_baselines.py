"""Per-step cost of every optimizer of the paper's Table 1 and of TSAM's three samplers, side by side.

Uses the setup of ``benchmarks/step_cost.py`` (same small CNN, batch of 64 random 3x32x32 images,
median wall time of one step after warm-up, ratio to the SGD step of the same run) on
ERM (sgd), SAM, ESAM2, PGN, RSAM, TSAM with Algorithm 2 (``tsam``), HMC (``tsam-hmc``, N = 1 and
N = 2) and naive sampling (``tsam-naive``). ESAM1 is SAM's step run for more steps, so its step
cost is SAM's; its budget multiplier against TSAM is printed below the table.

The steps of all optimizers are timed round-robin (one step of each, repeated), so a machine whose
load changes during the run (a shared CPU) slows all of them alike and the ratios stay meaningful.

    python benchmarks/step_cost_baselines.py                 # CPU, ~1-2 minutes
    python benchmarks/step_cost_baselines.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_cost import build, small_cnn, sync  # noqa: E402  (the shared setup)

BASELINES = [
    "sgd", "sam", "esam2", "pgn", "rsam", "tsam", 'tsam-hmc',
    'tsam-hmc:sampler_options={"num_steps":2}', "tsam-naive",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--optimizers", nargs="+", default=BASELINES)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = args.optimizers if args.optimizers[0] == "sgd" else ["sgd", *args.optimizers]
    runs = [build(spec, args.device) for spec in specs]
    for optimizer, closure in runs:
        for _ in range(args.warmup):
            optimizer.step(closure)
    times: list[list[float]] = [[] for _ in specs]
    for _ in range(args.repeats):
        for k, (optimizer, closure) in enumerate(runs):
            sync(args.device)
            start = time.perf_counter()
            optimizer.step(closure)
            sync(args.device)
            times[k].append(time.perf_counter() - start)
    rows = [{"spec": spec, "ms": statistics.median(t) * 1e3, "evals": opt.grad_evals_per_step}
            for spec, t, (opt, _) in zip(specs, times, runs)]
    base = rows[0]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    params = sum(p.numel() for p in small_cnn().parameters())
    print(f"device: {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} round-robin steps after {args.warmup} warm-up; small CNN, {params} parameters, "
          "batch 64")
    print("| optimizer | gradient evaluations / step | ms / step | ratio to SGD | ratio / evaluations |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["ms"] / base["ms"]
        print(f"| {r['spec']} | {r['evals']} | {r['ms']:.1f} | {ratio:.2f} | {ratio / r['evals']:.2f} |")
    from tiltedsam.optim.registry import budget_multiplier

    print(f"\nESAM1 = SAM's step; steps per TSAM step (gradient evaluations): {budget_multiplier('esam1'):.1f}")


if __name__ == "__main__":
    main()
