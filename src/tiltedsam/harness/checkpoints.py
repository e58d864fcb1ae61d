"""Checkpoints of harness runs: data only, checksummed, written atomically, loaded safely.

A checkpoint (``checkpoint.pt`` in the run directory, rewritten after every epoch) is a
``torch.save`` of a dict of tensors, plain containers (dict, list, tuple), strings, numbers,
booleans and ``None``, nothing else::

    format            "tiltedsam.checkpoint/2"
    package_version   tiltedsam.__version__ that wrote it
    checksum          SHA-256 (hex) of the canonical serialisation of every other entry
    config            the resolved RunConfig as a dict
    model             model.state_dict()
    optimizer         optimizer.state_dict() (base state, own settings, noise generator)
    epoch, step, grad_evals, train_seconds, wall_seconds
    rng               {"torch", "numpy", "python", "loader"}: global RNG states and the shuffling generator
                      (numpy's state as {"kind", "keys" (int64 tensor), "pos", "has_gauss", "cached_gaussian"})
    ess_warning       the run's tilt diagnostic so far (a string) or None
    finished          True once the budget is spent

The per-epoch metrics live in the run directory's ``metrics.csv`` alone (docs/harness.md).

Checkpoints are data, never code: :func:`save_checkpoint` refuses anything else (naming where it
sits) and :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, so a pickled object is
refused before anything runs; the checksum (tensor dtypes, shapes, bytes, every key and value) is
verified on load. Writes go to a temporary file moved into place (``os.replace``): a crash leaves
the previous checkpoint or the new one, and the next save removes a killed process's leftovers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._atomic import atomic_write_with, remove_stale_temporaries
from .._version import __version__

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "find_checkpoint", "payload_checksum"]

CHECKPOINT_FORMAT = "tiltedsam.checkpoint/2"
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, corrupt, not plain data, or of another format."""


def _feed(digest: Any, value: Any, where: str) -> None:
    """Canonical serialisation of ``value`` into ``digest`` (type tag, length-prefixed contents): dicts
    by sorted (type, repr) keys, lists and tuples alike, tensors as dtype, shape and raw bytes;
    anything else is a :class:`CheckpointError` naming ``where`` it sits."""
    def tag(kind: bytes, body: bytes) -> None:
        digest.update(kind + struct.pack("<Q", len(body)) + body)

    if value is None:
        tag(b"N", b"")
    elif isinstance(value, bool):
        tag(b"B", b"1" if value else b"0")
    elif isinstance(value, int):
        tag(b"I", str(value).encode())
    elif isinstance(value, float):
        tag(b"F", struct.pack("<d", value))  # bit-exact, NaN payloads included
    elif isinstance(value, str):
        tag(b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        tag(b"Y", value)
    elif isinstance(value, Tensor):
        if value.layout != torch.strided:
            raise CheckpointError(f"checkpoint entry {where} is a {value.layout} tensor; only dense tensors are saved")
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        tag(b"T", f"{value.dtype}|{tuple(value.shape)}".encode() + b"|" + hashlib.sha256(raw).digest())
    elif isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, repr(kv[0])))
        tag(b"D", str(len(items)).encode())
        for key, item in items:
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise CheckpointError(f"checkpoint entry {where} has a key of type {type(key).__name__}; "
                                      "only strings and numbers are allowed")
            _feed(digest, key, f"{where}[{key!r}]")
            _feed(digest, item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        tag(b"L", str(len(value)).encode())
        for index, item in enumerate(value):
            _feed(digest, item, f"{where}[{index}]")
    else:
        raise CheckpointError(f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__qualname__}; "
                              "checkpoints hold only tensors, dicts, lists, tuples, strings, numbers, "
                              "booleans and None")


def payload_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``payload`` without its ``checksum`` entry (:class:`CheckpointError` unless plain data)."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != "checksum"}, "payload")
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """``torch.save`` plain-data ``payload`` (plus format tag, version and checksum) to ``path`` atomically."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "package_version": __version__, **payload}
    payload["checksum"] = payload_checksum(payload)
    remove_stale_temporaries(path.parent, target=path.name)
    try:
        atomic_write_with(path, lambda temporary: torch.save(payload, temporary))
    except (OSError, RuntimeError) as exc:  # disk full, file-size limit: one line naming the file
        raise write_failure(exc, path) from None


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file: ``path`` itself, or ``path/checkpoint.pt`` for a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r} (expected a run directory holding "
                              f"{CHECKPOINT_NAME} or the file itself)")
    return path


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying that it is plain data of our
    format and that its checksum matches (:class:`CheckpointError`, one line naming the file, if not)."""
    file = find_checkpoint(path)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning would break the one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "Unsupported operand" in str(exc):
            raise CheckpointError(f"refusing to load {str(file)!r}: it is not plain checkpoint data (it holds "
                                  f"pickled objects that could run code); nothing from it was executed") from None
        raise CheckpointError(f"cannot read checkpoint {str(file)!r} (corrupt or not a checkpoint): "
                              f"{_first_line(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{str(file)!r} is not a tiltedsam checkpoint of format {CHECKPOINT_FORMAT!r} "
                              f"(found {found!r}); it was written by another version or program")
    try:
        actual = payload_checksum(payload)
    except CheckpointError as exc:
        raise CheckpointError(f"{str(file)!r}: {exc}") from None
    if payload.get("checksum") != actual:
        raise CheckpointError(f"checkpoint {str(file)!r} is corrupt: its contents do not match its checksum "
                              "(the file was changed after it was written); not using it")
    return payload


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, file-size limit, ...); the old one is kept."""


def write_failure(exc: BaseException, path: Path) -> CheckpointWriteError:
    """One line for a failed write of ``path``: the OS's reason, else the file-size limit or a full disk."""
    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else None
    if cause is None:
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
            limit, resource = -1, None
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        if limit >= 0 and limit != resource.RLIM_INFINITY:
            cause = f"the file-size limit of this process (ulimit -f: {limit} bytes) was reached"
        elif free is not None and free < 64 * 2**20:
            cause = f"the disk is full ({free} bytes free)"
        else:
            cause = " ".join(str(exc).split("\n")[0].split())[:200] or type(exc).__name__
    return CheckpointWriteError(f"cannot write checkpoint {str(path)!r}: {cause}; the previous checkpoint "
                                f"(if any) is kept")
