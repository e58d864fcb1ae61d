"""Atomic file writes: nothing a user keeps (checkpoints, reports, figures) is ever half-written.

Each writer produces the file under a temporary name in the target's folder and moves it into place
with ``os.replace``, which is atomic on POSIX and Windows; on any error the temporary file is removed
and the old target, if any, is left as it was. The file ends up with the mode a plain ``open()``
would give it (``0o666`` minus the umask), not the private ``0o600`` of a temporary file, so a
shared group can read reports and checkpoints when the umask allows it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_with"]


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
