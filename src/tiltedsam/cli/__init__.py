"""The ``tiltedsam`` command: a thin layer of argument parsing over library functions.

Each sub-command lives in its own module of this package with two functions:
``add_parser(subparsers)`` (defines the arguments) and ``run(args) -> int``. Modules that are not
importable (an optional dependency missing) are listed in the help with the reason.

Expected failures (a bad config or input file, a refused or corrupt checkpoint, a diverged run, a
file that cannot be written, a database that is not one) end as one line ``error: ...`` on stderr
and exit status 1; an interrupted sweep exits 130 (SIGINT) or 143 (SIGTERM) without a traceback.
Anything else is a bug and keeps its traceback.
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
    parser = ErrorLineParser(
        prog="tiltedsam",
        description="Tilted SAM (TSAM): train, compare and analyse sharpness-aware optimizers.",
    )
    parser.add_argument("--version", action="version", version=f"tiltedsam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:  # a command whose module or whose help's source cannot be imported is listed as unavailable
            importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"{__name__}.{name}"):
                continue  # command not part of this build
            subparsers.add_parser(name, help=f"(unavailable: missing dependency {exc.name!r})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .._warning_lines import install as one_line_warnings

    one_line_warnings()  # "warning: Category: message", without the echoed source line
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if not hasattr(args, "run"):
        parser.error(f"command {args.command!r} is unavailable in this installation")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt as exc:  # SweepInterrupted carries its signal's exit code
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    except _expected_errors() as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # a command's own message: always one "error: ..." line (exit 1, printed by Python)
        if not isinstance(exc.code, str):
            raise
        raise SystemExit(_error_line(exc.code)) from None
    except (MemoryError, RuntimeError) as exc:  # out of memory (Python's or torch's allocator) is the machine's
        if not _is_out_of_memory(exc):
            raise
        print(f"error: out of memory ({_one_line(exc)}); use a smaller model, batch_size or data.limit, "
              "or fewer workers", file=sys.stderr)
        return 1


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are a user's input or environment, not a bug (see the module docstring)."""
    import pickle
    import sqlite3

    types: list[type[BaseException]] = [ValueError, OSError, pickle.UnpicklingError, sqlite3.DatabaseError]
    try:
        from ..harness.runlock import RunDirectoryBusy, RunDirectoryLost
        from ..harness.sweep import SweepError
        from ..harness.train import RunDiverged

        types += [SweepError, RunDiverged, RunDirectoryBusy, RunDirectoryLost]
    except ImportError:  # pragma: no cover - harness dependencies missing
        pass
    try:
        from ..tilt import NonFiniteLossError

        types.append(NonFiniteLossError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _error_line(text: str) -> str:
    """``error: ...`` for a command's own exit message (with or without its ``error:``/``tiltedsam X:`` prefix)."""
    text = " ".join(text.split())
    for prefix in ("error: ", "tiltedsam "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return f"error: {text}"


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


class ErrorLineParser(argparse.ArgumentParser):
    """Usage errors as one line ``error: tiltedsam CMD: message (see tiltedsam CMD --help)``, exit 2,
    without argparse's usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line; file errors as "cannot use PATH: reason"."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {str(exc.filename)!r}" if exc.filename is not None else ""
        return f"cannot use{where}: {exc.strerror}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 1000 else text[:1000] + " ..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
