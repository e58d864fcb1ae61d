"""How many torch threads a process should use: one policy for every command that computes.

torch's default (one intra-op thread per core) is the fastest choice only on an otherwise idle
machine. As soon as anything else runs beside it, its threads wait for each other at every parallel
region and the run can collapse: on a shared 2-core machine an SGD digits run took 0.48 s with one
thread and 16.7 s with torch's default, and ``tiltedsam example`` 14 s instead of 292 s
beside one busy loop (``docs/tuning.md``, "Threads"); on an idle 2-core machine a second thread can
at best halve the time.

The policy, in order of precedence:

1. an explicit request (``--threads N`` on the command line, ``run.num_threads`` in a config);
2. the environment variable ``TILTEDSAM_THREADS``;
3. ``OMP_NUM_THREADS`` when the user set it (torch honours it too, so we keep it);
4. otherwise ``cores // processes`` capped by the cores that are idle right now: the cores this
   process may run on (``os.sched_getaffinity``) minus :func:`busy_cores` (the larger of the
   1-minute load average and the other tasks runnable at this moment), rounded, at least 1. A command that runs ``processes`` processes at once (the sweep's workers) divides
   the cores between them.

Nothing here imports the harness.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

__all__ = ["ENV_VAR", "ThreadChoice", "available_cores", "busy_cores", "choose_threads", "configure_threads",
           "add_threads_argument"]

#: environment variable that overrides the automatic choice (an integer >= 1)
ENV_VAR = "TILTEDSAM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    """The number of intra-op threads per process and why (recorded in every run's result)."""

    threads: int
    source: str  # "request", ENV_VAR, "OMP_NUM_THREADS" or "policy"
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"threads": self.threads, "source": self.source, "detail": self.detail}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def busy_cores() -> float:
    """How many cores other work keeps busy: the larger of the 1-minute load average (which lags by
    about a minute) and the tasks runnable right now other than this one (``/proc/loadavg``'s
    fourth field, Linux), so a competitor that started a second ago counts too."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            running = int(handle.read().split()[3].split("/")[0]) - 1  # minus this process
    except (OSError, ValueError, IndexError):
        running = 0
    return max(load, float(running))


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return number


def choose_threads(requested: int | None = None, processes: int = 1, *, default_cap: int | None = None,
                   environ: Mapping[str, str] | None = None, cores: int | None = None,
                   load: float | None = None) -> ThreadChoice:
    """Threads per process for a command that runs ``processes`` processes at once (see module doc).

    Args:
        requested: an explicit count (``--threads``); ``None`` or 0 means choose automatically.
        processes: how many processes of this command compute at the same time (>= 1).
        default_cap: at most this many threads when choosing automatically (the toy problems: 1).
        environ, cores, load: the environment, the available cores and the cores busy with other
            work (:func:`busy_cores`); ``None`` reads them from this machine (arguments exist for tests).

    Raises:
        ValueError: ``requested``, ``processes`` or an environment override is not an integer >= 1.
    """
    processes = _positive_int("processes", processes)
    if requested:
        check_threads("--threads (run.num_threads)", _positive_int("--threads", requested))
        return ThreadChoice(_positive_int("--threads", requested), "request", "asked for explicitly")
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR, "").strip():
        check_threads(ENV_VAR, _positive_int(ENV_VAR, environ[ENV_VAR]))
        return ThreadChoice(_positive_int(ENV_VAR, environ[ENV_VAR]), ENV_VAR, f"{ENV_VAR}={environ[ENV_VAR]}")
    if environ.get("OMP_NUM_THREADS", "").strip():
        try:
            return ThreadChoice(_positive_int("OMP_NUM_THREADS", environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS",
                                f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']}")
        except ValueError:
            pass  # torch ignores a malformed value too; fall through to the policy
    cores = available_cores() if cores is None else max(1, int(cores))
    if load is None:
        load = busy_cores()
    share = max(1, cores // processes)
    idle = max(1, math.floor(cores - load + 0.25))  # 0.25: a core busy a quarter of the time still counts as free
    threads = max(1, min(share, idle, default_cap or share))
    detail = (f"{cores} cores / {processes} process(es) = {share}, {idle} idle (busy {load:.2f})"
              + (f", capped at {default_cap}" if default_cap else ""))
    return ThreadChoice(threads, "policy", detail)


_INTEROP_SET = False


def configure_threads(requested: int | None = None, processes: int = 1, *,
                      default_cap: int | None = None) -> ThreadChoice:
    """:func:`choose_threads`, then set torch's intra-op threads (and, once per process, its inter-op
    threads to the same count: torch allows that only before its first parallel work)."""
    import torch

    global _INTEROP_SET
    choice = choose_threads(requested, processes, default_cap=default_cap)
    torch.set_num_threads(choice.threads)
    if not _INTEROP_SET:
        _INTEROP_SET = True
        try:
            torch.set_num_interop_threads(choice.threads)
        except RuntimeError:  # inter-op pool already started (e.g. called late in a long-lived process)
            pass
    return choice


from ._limits import check_threads  # noqa: E402


def add_threads_argument(parser: object, processes_note: str = "") -> None:
    """The ``--threads N`` option every computing command shares (an ``argparse`` parser)."""

    def count(text: str) -> int:
        import argparse

        try:
            value = _positive_int("--threads", text)
            check_threads("--threads", value)
            return value
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument(  # type: ignore[attr-defined]
        "--threads", type=count, default=None, metavar="N",
        help=f"torch threads per process{processes_note} (default: the cores / processes that are idle, at "
             f"least 1; or ${ENV_VAR}); recorded in every result")
