"""``tiltedsam sweep``: a resumable grid of runs recorded in SQLite."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="grid over optimizers x hyper-parameters x seeds, in an SQLite database (resumable)",
        description="Run a sweep config (see docs/harness.md). Re-running the same command skips finished runs "
                    "and resumes interrupted ones from their checkpoints; then writes the report.")
    p.add_argument("config", help="sweep config file (TOML, YAML or JSON)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep key, e.g. workers=2 or base.budget.amount=5 (repeatable)")
    p.add_argument("--out", help="output directory (sweep.db, runs/, report); default: the config's out_dir")
    p.add_argument("--workers", type=int, help="worker processes (default: the config's workers)")
    p.add_argument("--no-retry-failed", action="store_true", help="leave failed runs failed")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--reference", help="optimizer the report's paired differences are taken against (default sam)")
    from .._threads import add_threads_argument

    add_threads_argument(p, " (each worker; same as --set threads_per_worker=N)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..harness.config import ConfigError, toml_string
    from ..harness.report import write_report
    from ..harness.sweep import SweepError, load_sweep_config, run_sweep

    overrides = list(args.overrides)
    if args.out == "":
        raise SystemExit("error: --out is empty; name a directory")
    if args.out:
        overrides.append(f"out_dir={toml_string(args.out, '--out')}")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.threads:
        overrides.append(f"threads_per_worker={args.threads}")
    try:
        sweep = load_sweep_config(args.config, overrides)
        counts = run_sweep(sweep, retry_failed=not args.no_retry_failed)
    except (ConfigError, SweepError) as exc:
        raise SystemExit(f"error: {exc}") from None
    elsewhere = f", {counts['elsewhere']} left to another sweep process" if counts.get("elsewhere") else ""
    print(f"sweep {sweep.name}: {counts['done']} runs done, {counts['failed']} failed, "
          f"{counts['skipped']} already finished{elsewhere} (database {sweep.out_dir}/sweep.db)")
    from ..harness.sweep import expand_grid, failed_runs, open_database

    keys = {p.key for p in expand_grid(sweep, check=False)}
    connection = open_database(sweep.out_dir)
    try:
        failures = failed_runs(connection, keys)
    finally:
        connection.close()
    for failure in failures:
        print(f"{failure['status']}: {failure['label']} seed {failure['seed']} {failure['setting'] or ''}: "
              f"{failure['error']}")
    if not args.no_report:
        try:
            report = write_report(sweep.out_dir, title=f"Sweep {sweep.name}", only_keys=keys,
                                  reference=args.reference)
        except ValueError as exc:  # no finished run to report on (e.g. every run diverged)
            print(f"no report: {exc}")
        else:
            print(report.markdown.split("## Cost")[0].split("## Test accuracy (Table 1 style)")[-1].strip())
            print(f"report: {sweep.out_dir}/report.md")
    return 1 if counts["failed"] else 0
