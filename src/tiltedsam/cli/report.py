"""``tiltedsam report``: tables (Markdown, CSV) and plots from a sweep database or a run directory."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="paper-style tables and plots from a sweep database or one run directory",
        description="PATH is a sweep database (sweep.db), the directory holding it, or a single run directory.")
    p.add_argument("path", help="sweep.db, its directory, or a run directory")
    p.add_argument("--out", help="where to write report.md, CSVs and PNGs (default: next to the database)")
    p.add_argument("--title", help="report title")
    p.add_argument("--reference", help="optimizer the paired per-seed differences are taken against "
                                       "(default sam if it was run, else the first optimizer)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..harness.report import run_report, write_report
    from ..harness.sweep import SweepError, database_path

    path = Path(args.path)
    try:
        if path.is_dir() and (path / "result.json").exists() and not database_path(path).exists():
            print(run_report(path))
            return 0
        if path.is_dir() and (path / "config.json").exists() and not database_path(path).exists():
            raise SystemExit(f"error: {str(path)!r} is a run directory without result.json (unfinished run?)")
        report = write_report(path, args.out, args.title, reference=args.reference)
    except (SweepError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(report.markdown)
    if report.skipped:
        import sys

        print(f"warning: {len(report.skipped)} unreadable database row(s) skipped (listed in the report), e.g. "
              f"{report.skipped[0]}", file=sys.stderr)
    print(f"\nwritten to {args.out or database_path(path).parent}/ (report.md, *.csv, *.png)")
    from ..harness.glue_report import glue_table_from_database

    glue = glue_table_from_database(database_path(path))  # "" unless the sweep ran GLUE tasks
    if glue:
        print("\n" + glue)
    return 0
