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
    from ..optim.diagnostics import ess_message
    from ..quickstart import EXAMPLE_TSAM

    print("| optimizer | test acc % | final train loss | wall time (s) | gradient evaluations | mean ESS / s |")
    print("|---|---|---|---|---|---|")
    notes = []
    for r in run_example(args.epochs, args.seed):
        ess = "–" if r.mean_ess is None else f"{r.mean_ess:.3f} / {EXAMPLE_TSAM['num_samples']}"
        print(f"| {r.optimizer} | {100 * r.test_accuracy:.2f} | {r.final_train_loss:.4f} | {r.seconds:.2f} | "
              f"{r.grad_evals} | {ess} |")
        message = ess_message(r.mean_ess, EXAMPLE_TSAM["num_samples"])
        if message:
            notes.append(f"{r.optimizer}: {message}")
    print(f"\nOne seed ({args.seed}) on 449 test images (one image = 0.22 points): differences of a point or two are noise "
          "(`tiltedsam compare` pairs several seeds).")
    for note in notes:
        print(note)
    return 0
