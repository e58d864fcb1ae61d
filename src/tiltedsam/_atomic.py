"""Atomic file writes: nothing a user keeps (checkpoints, reports, figures) is ever half-written.

Each writer produces the file under a temporary name in the target's folder and moves it into place
with ``os.replace``, which is atomic on POSIX and Windows; on any error the temporary file is removed
and the old target, if any, is left as it was. A process killed between the two (``kill -9``) leaves
the temporary file behind; :func:`remove_stale_temporaries` deletes such leftovers (the next write of
the same file and ``train --resume`` call it). The file ends up with the mode a plain ``open()``
would give it (``0o666`` minus the umask), not the private ``0o600`` of a temporary file, so a
shared group can read reports and checkpoints when the umask allows it.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_with", "remove_stale_temporaries", "temporary_name_pattern"]

#: ``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp" + SUFFIX)`` names: 8 random characters in between
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp(?P<suffix>.*)$")


def temporary_name_pattern() -> re.Pattern[str]:
    """The pattern of the temporary names this module writes (group ``target``: the file's name)."""
    return _TEMPORARY


def remove_stale_temporaries(directory: str | os.PathLike[str], target: str | None = None) -> list[Path]:
    """Delete temporary files that an interrupted atomic write left in ``directory``.

    Only names of the form ``.NAME.XXXXXXXX.tmpSUFFIX`` whose ``SUFFIX`` is ``NAME``'s own suffix
    are touched (so user files are never matched); with ``target`` only those of that one file.
    Call it only where no other process writes the same files at the same time (a run directory is
    written by the one process that holds the run). Returns the removed paths.
    """
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or match["suffix"] != Path(match["target"]).suffix:
            continue
        if target is not None and match["target"] != target:
            continue
        try:
            if entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(entry)
        except FileNotFoundError:  # removed meanwhile
            continue
    return removed


def _current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)`` (e.g. ``torch.save``, ``figure.savefig``), then move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp made it 0o600
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write(path: str | os.PathLike[str], content: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``path`` atomically, flushed to disk before the rename."""
    data = content.encode("utf-8") if isinstance(content, str) else content

    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())

    return atomic_write_with(path, write)
