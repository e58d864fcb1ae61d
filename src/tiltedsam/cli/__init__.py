"""The ``tiltedsam`` command: a thin layer of argument parsing over library functions.

Each sub-command lives in its own module of this package with two functions:
``add_parser(subparsers)`` (defines the arguments) and ``run(args) -> int``. Modules that are not
importable (an optional dependency missing) are listed in the help with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .._version import __version__

#: sub-command modules, in the order shown by --help
COMMAND_MODULES = ["compare", "train", "sweep", "report", "analyze", "toy", "example", "optimizers"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiltedsam",
        description="Tilted SAM (TSAM): train, compare and analyse sharpness-aware optimizers.",
    )
    parser.add_argument("--version", action="version", version=f"tiltedsam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__name__}.{name}"):
                continue  # command not part of this build
            subparsers.add_parser(name, help=f"(unavailable: missing dependency {exc.name!r})")
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if not hasattr(args, "run"):
        parser.error(f"command {args.command!r} is unavailable in this installation")
    return int(args.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
