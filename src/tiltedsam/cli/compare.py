"""``tiltedsam compare``: the main job. ERM, SAM, ESAM1 and TSAM on MNIST-5k with 20% label noise."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..harness import compare as job

    p = subparsers.add_parser(
        "compare", help="the main job: ERM vs SAM vs ESAM1 vs TSAM on noisy MNIST-5k (about 10 min on 2 cores)",
        description=job.describe_job() + " Prints the test-accuracy table and writes report.md, CSVs, PNGs and "
                    "the SQLite database to --out. Re-running resumes.")
    p.add_argument("--quick", action="store_true",
                   help=f"a one-minute version ({job.QUICK_SEEDS} seed(s), {job.QUICK_EPOCHS} epochs, "
                        f"{job.QUICK_LIMIT:,} examples)")
    p.add_argument("--out", help="output directory (default results/compare, or results/compare-quick)")
    p.add_argument("--epochs", type=int, help=f"epochs for ERM/SAM/TSAM (default {job.DEFAULT_EPOCHS}; "
                                              f"ESAM1 gets TSAM's evaluations)")
    p.add_argument("--seeds", type=int, help=f"number of seeds (default {job.DEFAULT_SEEDS}; "
                                             f"{job.QUICK_SEEDS} with --quick)")
    p.add_argument("--workers", type=int, help=f"worker processes (default {job.DEFAULT_WORKERS}, at most the cores)")
    p.add_argument("--lr", type=float, default=job.DEFAULT_LR, help=f"constant learning rate (default {job.DEFAULT_LR})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep key, e.g. base.data.label_noise=0.4 (repeatable)")
    p.add_argument("--reference", help="optimizer the paired per-seed differences are taken against "
                                       "(default sam)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from .._threads import add_threads_argument

    add_threads_argument(p, " (each worker)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time

    from ..harness.compare import compare_config, run_compare
    from ..harness.config import ConfigError
    from ..harness.sweep import SweepError

    for name in ("epochs", "seeds", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name} must be >= 1, got {value}")
    start = time.perf_counter()
    try:
        sweep = compare_config(quick=args.quick, out_dir=args.out, epochs=args.epochs, seeds=args.seeds,
                               workers=args.workers, lr=args.lr,
                               overrides=[*args.overrides, *([f"threads_per_worker={args.threads}"]
                                                             if args.threads else [])],
                               progress=not args.no_progress)
        if args.reference and args.reference not in sweep.optimizers:
            raise SystemExit(f"error: --reference {args.reference!r} is not one of {sweep.optimizers}")
        markdown, out = run_compare(sweep, reference=args.reference)
    except (ConfigError, SweepError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(markdown)
    plots = ", ".join(str(out / name) for name in ("convergence.png", "accuracy_vs_t.png") if (out / name).exists())
    print(f"\nreport: {out / 'report.md'}  plots: {plots}  database: {out / 'sweep.db'}  "
          f"({time.perf_counter() - start:.0f} s)")
    return 0
