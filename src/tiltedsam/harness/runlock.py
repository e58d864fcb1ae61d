"""One writer per run directory: an OS lock held for the owning process's whole life.

A run directory must be written by one process at a time. A sweep's lease is only a hint (clock
skew, or a process stopped with Ctrl-Z, makes a live owner's lease look stale); this lock is the
authority::

    from tiltedsam.harness.runlock import RunDirectoryLock, RunDirectoryBusy

    with RunDirectoryLock(run_dir, owner="host:pid:nonce") as lock:
        ...                      # train
        lock.verify()            # before each write: still ours, directory still there
        ...

How: ``flock(LOCK_EX | LOCK_NB)`` on ``.tiltedsam.lock`` in the run directory, released by the
kernel however the process dies (no stale lock, no timeout; a stopped process keeps it). The file
holds the owner's text (:func:`read_owner`), for messages and for giving a wrongly reclaimed run back.

* :class:`RunDirectoryBusy` is raised at once (never waited on), naming the directory and holder.
* Re-entrant within one process: a nested lock of the same directory (a sweep worker's, then
  :func:`tiltedsam.harness.train.train`'s) shares the first; the outermost exit releases it.
* :meth:`RunDirectoryLock.verify` raises :class:`RunDirectoryLost` when the directory or lock file
  was deleted or replaced (writing on would create a stub directory without its config).
* Cluster engines take the lock in the process that trains, not the one that submits.
* ``flock`` is advisory and, on network file systems, as reliable as their lock support (NFSv4,
  Lustre with ``flock`` mounts); without ``fcntl`` (Windows) the lock always succeeds.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["RunDirectoryLock", "RunDirectoryBusy", "RunDirectoryLost", "LOCK_NAME", "read_owner"]

#: the lock file inside a run directory
LOCK_NAME = ".tiltedsam.lock"

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory."""


class RunDirectoryLost(RuntimeError):
    """The run directory was deleted or replaced while this process held it."""


#: resolved directory -> [file descriptor, nesting count, (device, inode) of the lock file]
_HELD: dict[str, list[Any]] = {}
_HELD_GUARD = threading.Lock()


def read_owner(run_dir: str | os.PathLike[str]) -> str:
    """The owner text the current (or last) holder wrote into the lock file; ``""`` if none."""
    try:
        with open(Path(run_dir) / LOCK_NAME, "rb") as stream:
            return stream.read(400).decode("utf-8", "replace").strip()
    except OSError:
        return ""


class RunDirectoryLock:
    """Hold ``run_dir`` for this process (see the module docstring). The directory must exist."""

    def __init__(self, run_dir: str | os.PathLike[str], owner: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.owner = owner or f"pid {os.getpid()}"
        self._key: str | None = None

    def acquire(self) -> "RunDirectoryLock":
        key = os.path.realpath(self.run_dir)
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                self._key = key
                return self
            file = Path(key) / LOCK_NAME
            fd = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        holder = read_owner(key) or "another process"
                        raise RunDirectoryBusy(
                            f"run directory {str(self.run_dir)!r} is in use by {holder} (it holds the directory's "
                            f"lock {LOCK_NAME}); wait for it to finish or stop it, or use another --out") from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, (self.owner + "\n").encode("utf-8", "replace"), 0)
                stat = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            _HELD[key] = [fd, 1, (stat.st_dev, stat.st_ino)]
            self._key = key
        return self

    def verify(self) -> None:
        """Raise :class:`RunDirectoryLost` unless the directory and our lock file are still in place."""
        if self._key is None:
            raise RuntimeError("RunDirectoryLock.verify() called before acquire()")
        identity = _HELD[self._key][2]
        try:
            stat = os.stat(Path(self._key) / LOCK_NAME)
        except OSError:
            stat = None
        if stat is None or (stat.st_dev, stat.st_ino) != identity:
            raise RunDirectoryLost(f"run directory {str(self.run_dir)!r} was deleted or replaced while this run "
                                   "was training; nothing more is written to it (the run is lost: start it again)")

    def release(self) -> None:
        if self._key is None:
            return
        with _HELD_GUARD:
            entry = _HELD[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del _HELD[self._key]
                os.close(entry[0])  # closing the only descriptor releases the flock
        self._key = None

    def __enter__(self) -> "RunDirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def verify_held(run_dir: str | os.PathLike[str]) -> None:
    """:meth:`RunDirectoryLock.verify` for ``run_dir`` if this process holds it (else nothing):
    called before each write of a run, so a deleted run directory is never silently recreated."""
    key = os.path.realpath(run_dir)
    with _HELD_GUARD:
        held = key in _HELD
    if held:
        lock = RunDirectoryLock(run_dir)
        lock._key = key
        lock.verify()


def holding_run_directory(check: Any) -> Any:
    """Decorator factory for ``train(config, *, world=None, ...)``: ``check(config, stop_after_epochs)``
    validates the config (every rank), then the main process creates ``config.run.out_dir`` and holds
    its :class:`RunDirectoryLock` for the call; a run directory it created that stays empty is removed
    again. ``check`` is passed in so this module stays below the training loop it guards."""
    import functools

    def decorate(train: Any) -> Any:
        return functools.wraps(train)(functools.partial(_held_call, train, check))

    return decorate


def _held_call(train: Any, check: Any, config: Any, *args: Any, **kwargs: Any) -> Any:
    from .config import ConfigError

    check(config, kwargs.get("stop_after_epochs"))  # nothing is created for an invalid config
    world = kwargs.get("world")
    if world is not None and not world.is_main:
        return train(config, *args, **kwargs)
    run_dir = Path(config.run.out_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"run.out_dir = {str(run_dir)!r} cannot be used as a run directory: "
                          f"{exc.strerror or exc}") from None
    try:
        with RunDirectoryLock(run_dir, owner=kwargs.pop("lock_owner", None) or _default_owner()):
            if kwargs.get("resume"):
                _refuse_finished_without_checkpoint(run_dir)
            return train(config, *args, **kwargs)
    except BaseException:
        if created:
            _remove_if_empty(run_dir)
        raise


def _refuse_finished_without_checkpoint(run_dir: Path) -> None:
    """``--resume`` of a finished run whose checkpoint is gone would train it again from scratch and
    overwrite its ``result.json``: refused."""
    from .checkpoints import CHECKPOINT_NAME

    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.exists() and not checkpoint.is_file():
        raise FileExistsError(f"{str(checkpoint)!r} is not a file; refusing to resume (or train over) this run")
    if (run_dir / "result.json").is_file() and not (run_dir / CHECKPOINT_NAME).exists():
        raise FileExistsError(f"{str(run_dir)!r} holds a finished run (result.json) but no {CHECKPOINT_NAME}; "
                              "refusing to train it again over its result (move result.json away to retrain)")


def _default_owner() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _remove_if_empty(run_dir: Path) -> None:
    """Remove ``run_dir`` when it holds nothing but our lock file (and never anything else)."""
    try:
        entries = [e.name for e in run_dir.iterdir()]
        if set(entries) <= {LOCK_NAME}:
            if entries:
                (run_dir / LOCK_NAME).unlink()
            run_dir.rmdir()
    except OSError:
        pass
