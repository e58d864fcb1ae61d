"""Which file system holds a path: the sweep index (SQLite in WAL mode) is only safe on a local disk
shared by processes of one host, so sweeps warn when their output is on a network file system."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["NETWORK_FILESYSTEMS", "filesystem_type", "warn_if_network_filesystem"]

# ---------------------------------------------------------------------- network file systems
#: file system types on which SQLite's WAL mode (shared memory between processes) is not safe
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "fuse.ceph", "9p", "afs", "ocfs2", "gfs2", "panfs", "fuse.s3fs", "fuse.gcsfuse", "wekafs"})


def filesystem_type(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> str | None:
    """The type of the file system holding ``path`` (the longest mount point above it in
    ``/proc/mounts``), or ``None`` where that file cannot be read (not Linux)."""
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    best, kind = "", None
    try:
        with open(mounts) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (str(target) == point or str(target).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def warn_if_network_filesystem(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> str | None:
    """Warn (and return the type) when ``path`` is on a network file system: the local engine's
    SQLite index needs every sweep process on one host and a local disk; clusters use
    ``--engine ray`` or ``--engine slurm``."""
    kind = filesystem_type(path, mounts)
    if kind is not None and kind in NETWORK_FILESYSTEMS:
        warnings.warn(f"{str(path)!r} is on a network file system ({kind}): the sweep index (SQLite, WAL) is "
                      "only safe for sweep processes on one host; run every `tiltedsam sweep` on this output "
                      "from this host, or use --engine ray / --engine slurm for several machines", stacklevel=2)
        return kind
    return None
