"""Warnings as one clean line, ``warning: CATEGORY: message``, for command-line processes.

Python's default format prints ``file.py:LINE: Category: message`` and then echoes the source line
(``result = train(...)``): noise for a user, and from a sweep's worker processes it interleaves
with the progress lines. :func:`install` replaces ``warnings.showwarning`` in this process (the CLI
and every sweep worker call it); which warnings are shown (filters, "once" rules) is unchanged.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

__all__ = ["install", "format_line"]


def format_line(message: Any, category: type[Warning]) -> str:
    text = " ".join(str(message).split())
    return f"warning: {category.__name__}: {text}"


def _show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
          line: str | None = None) -> None:
    stream = file if file is not None else sys.stderr
    try:
        stream.write(format_line(message, category) + "\n")
        stream.flush()
    except (OSError, ValueError, AttributeError):  # stderr closed: a warning is not worth a crash
        pass


def install() -> None:
    """Show every warning of this process as one ``warning: ...`` line on stderr."""
    warnings.showwarning = _show
