"""``tiltedsam example``: a 30-second SGD / SAM / TSAM comparison on scikit-learn's digits."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("example", help="quick SGD vs SAM vs TSAM run on the bundled digits data")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default 15)")
    p.add_argument("--seed", type=int, default=0)
    from .._threads import add_threads_argument

    add_threads_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._threads import configure_threads
    from ..quickstart import run_example

    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
    threads = configure_threads(args.threads)
    print(f"torch threads: {threads.threads} ({threads.detail})\n")
    print("| optimizer | test accuracy | final train loss | wall time (s) | gradient evaluations |")
    print("|---|---|---|---|---|")
    for r in run_example(args.epochs, args.seed):
        print(f"| {r.optimizer} | {r.test_accuracy:.4f} | {r.final_train_loss:.4f} | {r.seconds:.2f} | {r.grad_evals} |")
    return 0
