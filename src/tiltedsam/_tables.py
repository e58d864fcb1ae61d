"""The one writer of Markdown and CSV tables (reports of the harness, the toy figures, the analysis).

A table is a header and rows of cells. Markdown: a GitHub table, each cell shown by ``cell``
(``str`` by default), columns left-aligned unless ``align`` says ``"right"`` for a column. CSV:
RFC 4180 quoting with ``\\n`` line endings (not the ``\\r\\n`` of :mod:`csv`'s default), ``None`` as an
empty cell and floats as ``repr`` (they read back exactly).
"""

from __future__ import annotations

import csv
import io
from typing import Any, Callable, Sequence

__all__ = ["markdown_table", "csv_text"]


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, cell: Callable[[Any], str] = str,
                   align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; ``align[i]`` is ``"left"`` or ``"right"`` for column ``i``."""
    rules = ["---:" if side == "right" else "---" for side in (align or ["left"] * len(header))]
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """The table as CSV text with ``\\n`` line endings."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if value is None else value for value in row] for row in rows])
    return buffer.getvalue()
