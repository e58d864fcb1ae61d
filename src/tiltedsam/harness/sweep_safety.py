"""Small guards around the sweep database: how it is opened and who may create it.

* :func:`creation_lock`: an exclusive ``flock`` on ``sweep.db.lock`` next to the database, held while
  a process checks for the tables and creates (or migrates) them and switches the file to WAL. Two
  sweeps started together on a new directory otherwise both see "no tables" and one fails with
  ``table meta already exists`` or ``database is locked``. The kernel releases the lock when the
  process dies; the lock file stays (it is empty and harmless).
* :func:`sqlite_uri`: an SQLite URI for a path (any characters, percent-encoded) in a mode that never
  creates a file unless asked (``rw``), so a sweep whose directory was deleted under it fails
  instead of writing a stub database; read-only (``ro``), and ``immutable`` when the folder is not
  writable (SQLite cannot make the WAL index of a WAL database there; nothing else writes a
  database in a folder nobody can write).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

__all__ = ["creation_lock", "sqlite_uri", "LOCK_SUFFIX"]

LOCK_SUFFIX = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def creation_lock(database: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on ``database`` + ``.lock`` (blocking: creating takes milliseconds).
    Where the folder cannot be written (or is missing) no lock is taken: nothing can be created there."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fd = os.open(str(database) + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sqlite_uri(path: Path, mode: str = "rw") -> str:
    """``file:`` URI of ``path`` for ``sqlite3.connect(..., uri=True)`` in ``mode`` (``ro``/``rw``/``rwc``)."""
    absolute = os.path.abspath(path)
    uri = f"file:{quote(absolute, safe='/')}?mode={mode}"
    if mode == "ro" and not os.access(os.path.dirname(absolute) or ".", os.W_OK):
        uri += "&immutable=1"
    return uri
