"""Work per optimizer step that machine load cannot disturb, for this tree against another, side by side.

For each optimizer of ``step_cost.py --all``: the tensor operations one step dispatches (ATen calls seen
by a ``TorchDispatchMode``) and the Python function calls it makes (``sys.setprofile``), after warm-up,
for this tree and for the tree in ``--baseline-src`` (imported as ``tiltedsam_baseline`` in the same
process), and their ratios. The forward/backward is the same model in both, so a change of the
optimizer's own cost shows here exactly, where timings on a shared VM vary by several percent.

    python benchmarks/step_work.py --baseline-src /tmp/baseline/src    # git archive <rev> src | tar -x -C /tmp/baseline
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_cost import BASELINES, CHEAP_VARIANTS, DEFAULT, build  # noqa: E402


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def step_work(step) -> tuple[int, int]:
    """(ATen operations, Python function calls) of one call of ``step``."""
    with _CountOps() as ops:
        step()
    calls = [0]

    def profile(frame, event, arg):
        if event == "call":
            calls[0] += 1

    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(None)
    return ops.count, calls[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-src", required=True, metavar="DIR", help="the other tree's src/ folder")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.baseline_src, "tiltedsam")):
        parser.error(f"--baseline-src {args.baseline_src!r} holds no tiltedsam package (give the other tree's src/)")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        os.symlink(os.path.join(os.path.abspath(args.baseline_src), "tiltedsam"), os.path.join(scratch, "tiltedsam_baseline"))
        sys.path.append(scratch)
        print("| optimizer | ATen ops: baseline | this | ratio | Python calls: baseline | this | ratio |")
        print("|---|---|---|---|---|---|---|")
        for spec in DEFAULT + BASELINES + CHEAP_VARIANTS:
            work = {}
            for package in ("tiltedsam_baseline", "tiltedsam"):
                opt, step = build(spec, "cpu", package=package)
                period = getattr(getattr(opt, "sampler", None), "refresh_every", 1)
                for _ in range(args.warmup * period):
                    step()
                totals = [step_work(step) for _ in range(period)]  # a lazy sampler's whole refresh period
                work[package] = [sum(t[i] for t in totals) / period for i in (0, 1)]
            (ops_b, calls_b), (ops_t, calls_t) = work["tiltedsam_baseline"], work["tiltedsam"]
            print(f"| {spec} | {ops_b:.0f} | {ops_t:.0f} | {ops_t / ops_b:.3f} | {calls_b:.0f} | {calls_t:.0f} | "
                  f"{calls_t / calls_b:.3f} |")


if __name__ == "__main__":
    main()
