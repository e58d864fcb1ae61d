"""``tiltedsam sweep``: a resumable grid of runs recorded in SQLite."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="grid over optimizers x hyper-parameters x seeds, in an SQLite database (resumable)",
        description="Run a sweep config (see docs/harness.md). Re-running the same command skips finished runs "
                    "and resumes interrupted ones from their checkpoints; then writes the report.")
    p.add_argument("config", nargs="?", help="sweep config file (TOML, YAML or JSON), or paper:NAME for one of "
                   "the paper's experiments (--list-presets)")
    from ..harness.presets import SCALES

    p.add_argument("--list-presets", action="store_true", help="list the paper's experiments (paper:NAME) and exit")
    p.add_argument("--dry-run", action="store_true", help="print the grid, runs, gradient evaluations and GPU-hours; "
                   "train nothing")
    p.add_argument("--scale", choices=SCALES, default="paper", help="paper:NAME only: paper (the full grid), best "
                   "(the paper's best rho/t/s), smoke (one point per optimizer, 2 steps; seconds on a CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep key, e.g. workers=2 or base.budget.amount=5 (repeatable)")
    p.add_argument("--out", help="output directory (sweep.db, runs/, report); default: the config's out_dir")
    p.add_argument("--workers", type=int, help="worker processes (default: the config's workers)")
    p.add_argument("--no-retry-failed", action="store_true", help="leave failed runs failed")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--reference", help="optimizer the report's paired differences are taken against (default sam)")
    from .._threads import add_threads_argument

    add_threads_argument(p, " (each worker; same as --set threads_per_worker=N)")
    # where the runs train (harness/engines); see docs/distributed.md
    p.add_argument("--engine", choices=["local", "ray", "slurm"], default="local",
                   help="local worker processes (default), a Ray cluster, or a SLURM cluster through submitit")
    p.add_argument("--address", help="--engine ray: a running cluster (auto or HOST:PORT); default: start Ray here")
    p.add_argument("--cpus-per-run", type=int, help="ray/slurm: CPUs (and torch threads) per run (sweep key cpus_per_run)")
    p.add_argument("--gpus-per-run", type=float, help="ray/slurm: GPUs per run (sweep key gpus_per_run)")
    p.add_argument("--partition", help="--engine slurm: the partition to submit to")
    p.add_argument("--time-minutes", type=int, help="--engine slurm: time limit per run (default 60)")
    p.add_argument("--max-parallel", type=int, help="--engine slurm: runs of the job array at once (default: all)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..harness.config import ConfigError, toml_string
    from ..harness.report import write_report
    from ..harness.sweep import SweepError, load_sweep_config

    overrides = list(args.overrides)
    if args.out == "":
        raise SystemExit("error: --out is empty; name a directory")
    if args.out:
        overrides.append(f"out_dir={toml_string(args.out, '--out')}")
    if args.workers is not None:
        overrides.append(f"workers={args.workers}")
    if args.threads:
        overrides.append(f"threads_per_worker={args.threads}")
    for flag, key in (("cpus_per_run", "cpus_per_run"), ("gpus_per_run", "gpus_per_run")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    from ..harness import presets

    try:
        if args.list_presets:
            print(presets.list_text())
            return 0
        if args.config is None:
            raise ConfigError("give a sweep config file or paper:NAME (tiltedsam sweep --list-presets)")
        if args.dry_run:
            if not presets.is_preset_reference(args.config):
                raise ConfigError("--dry-run needs paper:NAME (a preset); got a file")
            print(presets.dry_run_text(args.config, args.scale, overrides))
            return 0
        if presets.is_preset_reference(args.config):
            sweep = presets.preset_sweep(args.config, args.scale, overrides)
        else:
            sweep = load_sweep_config(args.config, overrides)
        counts = _run_engine(args, sweep)
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
    from ..harness.glue_report import glue_table_from_database

    glue = glue_table_from_database(sweep.out_dir)  # "" unless the sweep ran GLUE tasks
    if glue:
        from .._atomic import atomic_write

        atomic_write(Path(sweep.out_dir) / "glue.md", glue)
        print(glue + f"GLUE table: {sweep.out_dir}/glue.md")
    return 1 if counts["failed"] else 0


def _run_engine(args: argparse.Namespace, sweep) -> dict[str, int]:
    """The sweep on the chosen engine, with that engine's flags."""
    from ..harness.engines import run_with_engine

    from ..harness.config import ConfigError

    if args.address and args.engine != "ray":
        raise ConfigError(f"--address is for --engine ray, not --engine {args.engine}")
    options: dict = {"retry_failed": not args.no_retry_failed}
    if args.engine == "ray":
        options["address"] = args.address
    elif args.engine == "slurm":
        options.update(partition=args.partition, time_minutes=args.time_minutes, max_parallel=args.max_parallel)
    return run_with_engine(sweep, args.engine, **options)
