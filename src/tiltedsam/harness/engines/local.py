"""The local engine's device placement: one device per worker process on a multi-GPU machine."""

from __future__ import annotations

__all__ = ["visible_devices", "worker_devices"]


def visible_devices(requested: str) -> list[str]:
    """The devices a sweep asking for ``requested`` (``run.device``) may spread its workers over:
    every visible CUDA device for an unindexed ``"cuda"``, else ``[requested]`` itself."""
    if requested == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1:
            return [f"cuda:{index}" for index in range(count)]
    return [requested]


def worker_devices(requested: str, workers: int) -> list[str | None]:
    """The device of each of ``workers`` worker processes: worker ``i`` gets the ``i``-th visible
    device, round robin when there are more workers than devices (they then share one). ``None``
    everywhere when there is only one device: each run's own ``run.device`` stands."""
    devices = visible_devices(requested)
    if len(devices) < 2:
        return [None] * workers
    return [devices[index % len(devices)] for index in range(workers)]
