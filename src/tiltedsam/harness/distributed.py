"""Multi-process training for the harness: one run split over N ranks with DistributedDataParallel
(``run.parallel = "ddp"``, the default) or FSDP2 (``run.parallel = "fsdp"``, :class:`ShardedWorld`).

Two ways in, the same run:

* ``tiltedsam train ... --nproc N`` spawns N local processes (:func:`launch`), ``gloo`` on CPU and
  ``nccl`` on GPUs (rank ``r`` on ``cuda:r``);
* ``torchrun --nproc_per_node=N -m tiltedsam train ...`` (also across nodes): every process runs the
  CLI, which finds torchrun's environment and joins its process group (:func:`world_from_environment`).

Each rank trains the same model on its shard of every global mini-batch: ``batch_size`` in the config
stays the *global* batch and must be divisible by N; each rank's loader takes ``batch_size / N``.
:class:`ShardedRandomSampler` draws the same permutation as the single-process ``RandomSampler``
(from the run's own shuffling generator, identical on every rank and restored on resume) and deals
it out round-robin, so the union of the ranks' k-th batches is exactly the single-process run's
k-th batch. Gradients are averaged by DDP, the losses that weight TSAM's samples by the optimizer
(see ``tiltedsam.optim.distributed``), metrics by :meth:`DistributedWorld.reduce_mean`; only rank 0
writes files (config, metrics, checkpoints, result) and shows the progress bar, so the run
directory looks exactly like a single-process one (``run.json`` also records ``world_size``).
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from .train import World

__all__ = ["ShardedRandomSampler", "DistributedWorld", "ShardedWorld", "launch", "world_from_environment", "choose_backend"]


class ShardedRandomSampler(torch.utils.data.Sampler[int]):
    """This rank's share of the single-process run's random order, from a generator all ranks share.

    Each pass takes the order a ``RandomSampler(dataset, generator=generator)`` gives (and lets it
    draw from the generator exactly as it would in one process, so epochs and resumed runs line up),
    pads it by repeating its start to a multiple of ``world_size`` (as ``DistributedSampler`` does)
    and yields every ``world_size``-th index from ``rank``. With a per-rank batch of
    ``B / world_size`` the ranks' k-th batches together are the single-process k-th batch.
    """

    def __init__(self, dataset: Dataset, generator: torch.Generator, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.num_examples = len(dataset)  # type: ignore[arg-type]
        self.generator = generator
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.world_size)

    def __iter__(self) -> Iterator[int]:
        source = iter(torch.utils.data.RandomSampler(range(self.num_examples), generator=self.generator))
        order = list(itertools.islice(source, self.num_examples))
        order += order[:len(self) * self.world_size - len(order)]
        yield from order[self.rank::self.world_size]
        for _ in source:  # RandomSampler's own last draw(s) once exhausted: keep the generator in step
            pass


def choose_backend(device: str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@dataclass
class DistributedWorld(World):
    """A rank of an initialised ``torch.distributed`` process group (the default group)."""

    local_rank: int = 0
    backend: str = "gloo"

    def device(self, requested: str) -> torch.device:
        if self.backend == "nccl":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            return device
        return torch.device(requested)

    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ValueError(f"batch_size={batch_size} (the global batch) must be divisible by the number of "
                             f"processes {self.world_size}")
        return batch_size // self.world_size

    def train_sampler(self, dataset: Dataset, generator: torch.Generator) -> torch.utils.data.Sampler:
        return ShardedRandomSampler(dataset, generator, self.rank, self.world_size)

    def eval_shard(self, dataset: Dataset) -> Dataset:
        # each rank evaluates every world_size-th example; reduce_mean of the sums gives the full-set metrics
        return Subset(dataset, range(self.rank, len(dataset), self.world_size))  # type: ignore[arg-type]

    def wrap_model(self, model: nn.Module) -> nn.Module:
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def reduce_mean(self, values: Tensor) -> Tensor:
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        buffer = values.detach().to(device, torch.float64).clone()
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return (buffer / self.world_size).to(values.device, values.dtype)

    def barrier(self) -> None:
        dist.barrier()


@dataclass
class ShardedWorld(DistributedWorld):
    """A rank of an FSDP2 run (``run.parallel = "fsdp"``): each rank holds one shard of the parameters,
    their gradients, the optimizer's snapshot and state (see docs/distributed.md for the memory).

    * the model is sharded with ``fully_shard``: every module that owns parameters is one unit (its
      parameters are all-gathered just before its forward and freed after), then the root;
    * evaluation runs the *whole* evaluation set on every rank: each forward is a collective, so the
      ranks must run the same number of batches (equal-count shards would have to pad or drop examples);
    * checkpoints go through ``torch.distributed.checkpoint`` (:mod:`tiltedsam.optim.dcp`): every rank
      writes its shards into ``checkpoint-<token>.dcp/`` in the run directory, which ``checkpoint.pt``
      (rank 0, with the metrics, RNG states, ...) names. A new one is complete before ``checkpoint.pt``
      points to it; older ones are removed. Such a run resumes on any number of processes, with
      FSDP2, DDP or in one process.
    """

    _current_checkpoint: str | None = None

    def wrap_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cuda" if self.backend == "nccl" else "cpu", (self.world_size,))
        units = [m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))]
        for module in units:
            fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def eval_shard(self, dataset: Dataset) -> Dataset:
        return dataset  # the whole set on every rank; reduce_mean of equal values leaves them unchanged

    def training_state(self, run_dir: Path, model: nn.Module, optimizer: Any) -> tuple[Any, Any]:
        import shutil
        import uuid

        from ..optim import dcp

        name: list[Any] = [f"checkpoint-{uuid.uuid4().hex[:12]}.dcp" if self.is_main else None]
        dist.broadcast_object_list(name, src=0)
        dcp.save(Path(run_dir) / name[0], model, optimizer)  # collective; complete on every rank on return
        if self.is_main:
            keep = {name[0], self._current_checkpoint}  # the new one, and the one checkpoint.pt still names
            for stale in Path(run_dir).glob("checkpoint-*.dcp"):
                if stale.name not in keep:
                    shutil.rmtree(stale, ignore_errors=True)
        self._current_checkpoint = name[0]
        entry = {"dcp": name[0]}
        return entry, entry

    def load_training_state(self, run_dir: Path, model: nn.Module, optimizer: Any, model_entry: Any,
                            optimizer_entry: Any) -> None:
        super().load_training_state(run_dir, model, optimizer, model_entry, optimizer_entry)
        if isinstance(model_entry, dict) and "dcp" in model_entry:
            self._current_checkpoint = model_entry["dcp"]


def _init(rank: int, world_size: int, local_rank: int, backend: str, init_method: str,
          parallel: str = "ddp") -> DistributedWorld:
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    if backend == "gloo" and torch.get_num_threads() * world_size > (os.cpu_count() or 1):
        # N CPU processes share the cores: without this each would start one thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    kind = ShardedWorld if parallel == "fsdp" else DistributedWorld
    return kind(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def world_from_environment(device: str, parallel: str = "ddp") -> DistributedWorld | None:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment): join its process group; else ``None``.
    ``parallel`` (``run.parallel``): ``"ddp"`` or ``"fsdp"`` (a :class:`ShardedWorld`)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialised in this process")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return _init(rank, world_size, local_rank, choose_backend(device), "env://", parallel)


def _rank_main(rank: int, world_size: int, backend: str, init_method: str, config_dict: dict[str, Any],
               options: dict[str, Any], outcome_dir: str) -> None:
    from .config import RunConfig, from_dict
    from .train import RunInterrupted, train

    world = _init(rank, world_size, rank, backend, init_method, config_dict.get("run", {}).get("parallel", "ddp"))
    outcome = Path(outcome_dir) / f"rank{rank}.txt"
    try:
        train(from_dict(RunConfig, config_dict), world=world, **options)
        outcome.write_text("ok")
    except RunInterrupted as exc:
        outcome.write_text(f"interrupted\n{exc}")
    except Exception:
        outcome.write_text(f"error\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


class RankFailed(RuntimeError):
    """A rank of a :func:`launch`-ed run raised; the message holds its traceback."""


def launch(config: Any, nproc: int, *, resume: bool = False, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Run :func:`~tiltedsam.harness.train.train` on ``nproc`` local processes; return rank 0's result.

    ``gloo`` when ``config.run.device`` is a CPU, ``nccl`` (one GPU per rank) when it is CUDA. The
    processes meet through a file in a fresh temporary directory (no network port is opened).
    Raises :class:`~tiltedsam.harness.train.RunInterrupted` like :func:`train` when
    ``stop_after_epochs`` stops the run, and :class:`RankFailed` when a rank fails.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    from .config import to_dict
    from .train import RunInterrupted, read_result

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}")
    backend = choose_backend(config.run.device)
    if backend == "nccl" and nproc > torch.cuda.device_count():
        raise ValueError(f"nproc={nproc} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    if config.batch_size % nproc:
        raise ValueError(f"batch_size={config.batch_size} (the global batch) must be divisible by nproc={nproc}")
    options = {"resume": resume, "stop_after_epochs": stop_after_epochs}
    with tempfile.TemporaryDirectory(prefix="tiltedsam-ddp-") as meeting:
        init_method = Path(meeting, "rendezvous").as_uri()
        try:
            mp.spawn(_rank_main, args=(nproc, backend, init_method, to_dict(config), options, meeting),
                     nprocs=nproc, join=True)
        except ProcessException as exc:  # a rank raised or died
            raise RankFailed(f"a training process failed:\n{exc}") from None
        outcomes = [Path(meeting, f"rank{r}.txt").read_text() for r in range(nproc)]
    if outcomes[0].startswith("interrupted"):
        raise RunInterrupted(outcomes[0].split("\n", 1)[1])
    return read_result(config.run.out_dir)
