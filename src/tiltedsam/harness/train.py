"""One training run, :func:`train`: setup (run directory, data, model, optimizer, budget:
:func:`_start_run`), epochs of ``optimizer.step(closure)`` (:func:`_train_epoch`), evaluation (loss
at θ on a fixed training subset, val, test: :func:`_evaluate_epoch`), metrics.csv then the checkpoint
(:func:`_record_epoch`), result.json (:func:`_finish_run`). File formats live in :mod:`.rundir`,
data in :mod:`.rundata`. ``resume=True`` reproduces an uninterrupted run exactly (model, optimizer,
global RNGs and the shuffling generator are restored; epochs are read back from ``metrics.csv``).
Distributed training slots in through :class:`World`; this module itself runs one process.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import random
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import _json
from .._atomic import remove_stale_temporaries
from .._threads import configure_threads
from .._version import __version__
from ..optim.diagnostics import TiltDiagnosticWarning, ess_message
from ..optim.registry import (ALIASES, REGISTRY, create_optimizer, equal_compute_steps, grad_evals_per_step,
                              resolve_base_optimizer)
from ..optim.schedules import TiltScheduler
from ..tilt import NonFiniteLossError
from .checkpoint_checks import check_resume_state
from .checkpoints import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, atomic_write_text, from_dict, identity_dict, run_key, save_config, to_dict
from .data import LengthGroupedSampler
from .dropout import StepRngReplay
from .models import build_model, check_model_options
from .tasks import evaluation_loss, summary_metrics, task_metrics, training_loss
from .rundata import dataset_kwargs, load_run_data
from .rundir import (ACCURACY_UNIT, METRIC_COLUMNS, RESULT_FORMAT, finite_mean, read_metrics, read_result,
                     summarize, write_metrics, write_result)
from .runlock import holding_run_directory, verify_held

__all__ = ["World", "Budget", "train", "resolve_budget", "evaluate", "dataset_kwargs", "git_commit",
           "METRIC_COLUMNS", "RunInterrupted", "RunDiverged", "read_result", "summarize", "check_run", "check_device",
           "check_optimizer_settings", "MAX_MODEL_BYTES_FRACTION"]

#: size of the fixed training subset on which every optimizer's training loss at θ is measured
#: after each epoch (the same points for every optimizer, so the curves compare like with like)
TRAIN_LOSS_SUBSET = 512


class RunInterrupted(RuntimeError):
    """Raised by :func:`train` when ``stop_after_epochs`` stops a run early (the checkpoint is on disk)."""


class RunDiverged(RuntimeError):
    """Raised by :func:`train` when the training loss (or the model) is no longer finite; nothing of
    the diverged state is written (the last finite epoch's checkpoint stays)."""


#: refuse models whose parameters alone would take more than this fraction of the machine's memory
MAX_MODEL_BYTES_FRACTION = 0.5


@dataclass
class World:
    """The process group a run lives in; here one process, rank 0 of 1 (a distributed launcher
    overrides the hooks; only the main process writes files and shows progress)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def train_sampler(self, dataset: Dataset, generator: torch.Generator) -> torch.utils.data.Sampler:
        return torch.utils.data.RandomSampler(dataset, generator=generator)

    def reduce_mean(self, values: Tensor) -> Tensor:
        return values

    def barrier(self) -> None:
        pass

    # hooks for harness.distributed.DistributedWorld (identity for one process)
    def device(self, requested: str) -> torch.device:
        return torch.device(requested)

    def local_batch_size(self, batch_size: int) -> int:
        return batch_size

    def eval_shard(self, dataset: Dataset) -> Dataset:
        return dataset

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def training_state(self, run_dir: Path, model: nn.Module, optimizer: Any) -> tuple[Any, Any]:
        """The checkpoint's ``model`` and ``optimizer`` entries (every rank calls it; rank 0 writes them)."""
        return model.state_dict(), optimizer.state_dict()

    def load_training_state(self, run_dir: Path, model: nn.Module, optimizer: Any, model_entry: Any,
                            optimizer_entry: Any) -> None:
        """Load the entries :meth:`training_state` wrote, also those of a sharded run (any world size)."""
        if isinstance(model_entry, dict) and set(model_entry) == {"dcp"}:  # a sharded (FSDP2) run's checkpoint
            from ..optim import dcp

            dcp.load(run_dir / model_entry["dcp"], model, optimizer)
            return
        model.load_state_dict(model_entry)
        optimizer.load_state_dict(optimizer_entry)


@dataclass
class Budget:
    """The run's length in optimizer steps, and how it was derived."""

    total_steps: int
    steps_per_epoch: int
    grad_evals_per_step: int | float  # full-batch equivalents, averaged over steps (fractional: cheap TSAM)
    description: str

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def total_grad_evals(self) -> int | float:
        return self.evals_after(self.total_steps)

    def evals_after(self, steps: int) -> int | float:
        """Gradient evaluations spent after ``steps`` steps (rounded to 6 decimals when fractional)."""
        value = steps * self.grad_evals_per_step
        return value if isinstance(value, int) else round(value, 6)


def base_optimizer_kwargs(config: RunConfig) -> dict[str, Any]:
    """``lr``, ``weight_decay`` and ``momentum`` where the base optimizer takes one (not Adam/AdamW)."""
    kwargs = {"lr": config.optimizer.lr, "weight_decay": config.optimizer.weight_decay}
    if "momentum" in inspect.signature(resolve_base_optimizer(config.optimizer.base).__init__).parameters:
        kwargs["momentum"] = config.optimizer.momentum
    return kwargs


def check_device(requested: str) -> torch.device:
    """``run.device`` as a torch device this build and machine can use, else :class:`ConfigError`."""
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"run.device = {requested!r} is not a device; allowed: cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ConfigError(f"run.device = {requested!r}, but this torch build ({torch.__version__}) has no CUDA "
                              "support; use run.device=cpu or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(f"run.device = {requested!r}, but no CUDA device is visible; use run.device=cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"run.device = {requested!r}, but only {count} CUDA device(s) are visible "
                              f"(cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"run.device = {requested!r}, but MPS is not available on this machine")
    elif device.type != "cpu":
        raise ConfigError(f"run.device = {requested!r} is not supported; allowed: cpu, cuda, cuda:N, mps")
    return device


def _registry_name(name: str) -> str:
    """The registry's name for ``name`` (``"erm"`` -> ``"sgd"``): aliases resolve through the registry."""
    return ALIASES.get(name.lower(), name.lower())


def check_optimizer_settings(config: RunConfig) -> None:
    """:class:`ConfigError` naming unknown ``optimizer.settings`` keys, or bad values (the optimizer is
    built once on a one-element dummy parameter)."""
    name = config.optimizer.name
    key = _registry_name(name)
    if key not in REGISTRY:
        raise ConfigError(f"optimizer.name = {name!r} is not a registered optimizer; allowed: "
                          f"{', '.join(sorted(REGISTRY))} (`tiltedsam optimizers` lists them)")
    try:
        base = resolve_base_optimizer(config.optimizer.base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer.base: {exc}") from None
    own = {n for n, p in inspect.signature(REGISTRY[key].cls.__init__).parameters.items()
           if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"model", "seed"}
    base_keys = {n for n, p in inspect.signature(base.__init__).parameters.items()
                 if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    base_keys -= {"self", "params", "lr", "momentum", "weight_decay"}
    unknown = sorted(set(config.optimizer.settings) - own - base_keys)
    if unknown:
        raise ConfigError(f"unknown optimizer setting(s) {', '.join('optimizer.settings.' + k for k in unknown)} "
                          f"for {name!r} on base {config.optimizer.base!r}; allowed: "
                          f"{', '.join(sorted(own)) or 'none'} (the optimizer's own) and "
                          f"{', '.join(sorted(base_keys)) or 'none'} (the base optimizer's)")
    dummy = torch.zeros(1, requires_grad=True)
    try:
        create_optimizer(name, [dummy], base_optimizer=config.optimizer.base, seed=config.seed,
                         **base_optimizer_kwargs(config), **config.optimizer.settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer {name!r} rejects its settings {config.optimizer.settings}: "
                          f"{' '.join(str(exc).split())}") from None


def check_run(config: RunConfig, stop_after_epochs: int | None = None) -> None:
    """Everything about ``config`` that can be checked without data: device, optimizer settings,
    budget, ``stop_after_epochs``. Raises :class:`ConfigError` naming the key."""
    if stop_after_epochs is not None and (isinstance(stop_after_epochs, bool) or stop_after_epochs < 1):
        raise ConfigError(f"stop_after_epochs = {stop_after_epochs!r} is invalid; allowed: an integer >= 1")
    check_device(config.run.device)
    try:
        check_model_options(config.model.name, config.model.options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_optimizer_settings(config)
    try:
        resolve_budget(config, steps_per_epoch=1)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"budget: {' '.join(str(exc).split())}") from None


def _check_model_size(config: RunConfig, data: Any) -> None:
    """Build the model on the ``meta`` device (no memory) and refuse it when its parameters alone
    would take more than :data:`MAX_MODEL_BYTES_FRACTION` of the machine's memory."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the run's RNG stream is untouched
            model = build_model(config.model.name, data, **config.model.options)
    except Exception:  # bad options, or a builder that cannot run on the meta device: the real build tells
        return
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return
    if size > MAX_MODEL_BYTES_FRACTION * memory:
        count = sum(p.numel() for p in model.parameters())
        raise ConfigError(f"model {config.model.name!r} with options {config.model.options} has {count:,} "
                          f"parameters ({size / 2**30:.1f} GiB), more than {MAX_MODEL_BYTES_FRACTION:.0%} of this "
                          f"machine's {memory / 2**30:.1f} GiB memory; use smaller model.options")


def resolve_budget(config: RunConfig, steps_per_epoch: int) -> Budget:
    """``config.budget`` in steps: ``epochs`` -> ``amount * steps_per_epoch``, ``steps`` -> ``amount``,
    ``grad_evals`` -> the most steps whose evaluations fit in ``amount``. Another optimizer's budget
    (``budget.match_optimizer`` or the entry's ``budget_reference``) counts that optimizer's steps,
    converted by :func:`tiltedsam.optim.registry.equal_compute_steps` (SAM matched to TSAM with ``s``
    samples runs ``s`` times as many steps).
    """
    budget, name, settings = config.budget, config.optimizer.name, dict(config.optimizer.settings)
    own_evals = grad_evals_per_step(name, **settings)
    reference = budget.match_optimizer or REGISTRY[_registry_name(name)].budget_reference
    if reference is not None:
        reference_evals = grad_evals_per_step(reference, **budget.match_settings)
        reference_steps = {"epochs": budget.amount * steps_per_epoch, "steps": budget.amount,
                           "grad_evals": math.floor(budget.amount / reference_evals + 1e-9)}[budget.kind]
        total_steps = equal_compute_steps(name, reference_steps, reference=reference, settings=settings,
                                          reference_settings=budget.match_settings)
        description = (f"{budget.amount} {budget.kind} of {reference} ({reference_evals} evals/step) = "
                       f"{Budget(reference_steps, 1, reference_evals, '').total_grad_evals} gradient evaluations")
    elif budget.kind == "epochs":
        total_steps, description = budget.amount * steps_per_epoch, f"{budget.amount} epochs"
    elif budget.kind == "steps":
        total_steps, description = budget.amount, f"{budget.amount} steps"
    else:  # own_evals may be fractional (cheap TSAM variants)
        total_steps = math.floor(budget.amount / own_evals + 1e-9)
        description = f"{budget.amount} gradient evaluations"
    if total_steps < 1:
        raise ValueError(f"budget.amount={budget.amount} ({description}) is less than one step of "
                         f"{name} ({own_evals} gradient evaluations per step)")
    return Budget(total_steps, steps_per_epoch, own_evals, description)


def make_tilt_scheduler(config: RunConfig, optimizer: Any, total_steps: int) -> Any:
    """A :class:`tiltedsam.optim.schedules.TiltScheduler` over the whole run, or None for a constant tilt."""
    kind = config.optimizer.tilt_schedule
    if kind == "constant":
        return None
    if not hasattr(optimizer, "tilt"):
        raise ValueError(f"optimizer.tilt_schedule={kind!r} needs an optimizer with a tilt (TSAM), "
                         f"got {config.optimizer.name!r}")
    return TiltScheduler(optimizer, kind=kind, total_steps=total_steps)


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package is imported from, else ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, loss_fn: Callable[[Tensor, Tensor], Tensor],
             batch_size: int, device: torch.device, world: World | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``dataset`` (eval mode; train mode is restored)."""
    world = world or World()
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    for inputs, targets in DataLoader(world.eval_shard(dataset), batch_size=batch_size, shuffle=False):
        inputs, targets = inputs.to(device), torch.as_tensor(targets).to(device)
        outputs = model(inputs)
        totals[0] += float(loss_fn(outputs, targets)) * len(targets)
        totals[1] += float((outputs.argmax(1) == targets).sum())
        totals[2] += len(targets)
    model.train(was_training)
    totals = world.reduce_mean(totals)
    if totals[2] == 0:
        return float("nan"), float("nan")
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def _rng_states(loader_generator: torch.Generator) -> dict[str, Any]:
    """The global RNG states and the shuffling generator's, as checkpoint data (no numpy arrays)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate(),
            "loader": loader_generator.get_state()}


def _restore_rng_states(states: dict[str, Any], loader_generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    loader_generator.set_state(states["loader"])


@dataclass
class _Run:
    """One run while it trains: what :func:`_start_run` built and the counters the epochs advance."""

    config: RunConfig
    world: World
    run_dir: Path
    device: torch.device
    threads: Any
    data: Any
    model: nn.Module
    net: nn.Module  # the model as the closure calls it (DDP-wrapped under torch.distributed)
    optimizer: Any
    train_loader: DataLoader
    loader_generator: torch.Generator
    replay: StepRngReplay
    budget: Budget
    tilt_scheduler: Any
    loss_fn: nn.Module
    eval_loss_fn: nn.Module  # validation/test loss: the plain empirical loss (no label smoothing)
    loss_subset: Dataset  # the same fixed training examples for every optimizer: loss at θ
    rows: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    ess_warning: str | None = None
    progress: Any = None

    @property
    def done(self) -> bool:
        return self.step >= self.budget.total_steps

    @property
    def num_samples(self) -> int | None:
        return getattr(self.optimizer, "hyperparameters", {}).get("num_samples")


@holding_run_directory(check=check_run)
def train(config: RunConfig, *, resume: bool = False, stop_after_epochs: int | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, world: World | None = None) -> dict[str, Any]:
    """Run ``config`` to the end of its budget and return the result dict (also ``result.json``).

    Args:
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (its config must match).
        stop_after_epochs: raise :class:`RunInterrupted` once this many epochs are done and
            checkpointed (simulates an interruption).
        on_epoch: called with each new metrics row once it is on disk (main process only).

    Raises :class:`ConfigError` for a config that cannot run here, :class:`CheckpointError` for a
    corrupt checkpoint or one of another config, :class:`RunDiverged` for a non-finite training loss.
    """
    from tqdm.auto import tqdm

    world = world or World()
    run = _start_run(config, world, resume)
    # disable=None: no bar when stderr is not a terminal (a redirected log gets no carriage-return flood)
    run.progress = tqdm(total=run.budget.total_steps, initial=run.step, desc=config.display_label, unit="step",
                        disable=None if (config.run.progress and world.is_main) else True, leave=False,
                        dynamic_ncols=True)
    try:
        run.model.train()
        while not run.done:  # the last epoch may be partial when the budget is in steps or evaluations
            epoch_start = time.perf_counter()
            sums = _train_epoch(run)
            _record_epoch(run, _evaluate_epoch(run, sums, epoch_start), on_epoch)
            world.barrier()
            if stop_after_epochs is not None and run.epoch >= stop_after_epochs and not run.done:
                raise RunInterrupted(f"stopped after epoch {run.epoch} (step {run.step} of "
                                     f"{run.budget.total_steps}); resume with --resume")
    finally:
        run.progress.close()
    return _finish_run(run)


# ---------------------------------------------------------------------- setup
def _open_run_dir(config: RunConfig, world: World, device: torch.device, resume: bool) -> dict[str, Any] | None:
    """The run directory's checkpoint (of ``config``) when resuming, else None; a fresh run refuses a
    directory that already holds one."""
    run_dir = Path(config.run.out_dir)  # created (and locked) by the main process's train wrapper
    if world.is_main and resume:  # leftovers of a write that a killed process never finished
        remove_stale_temporaries(run_dir)
    if resume and (run_dir / CHECKPOINT_NAME).is_file():
        checkpoint = load_checkpoint(run_dir, map_location=device)
        saved = from_dict(RunConfig, checkpoint["config"])
        if identity_dict(saved) != identity_dict(config):
            raise CheckpointError(f"the checkpoint in {str(run_dir)!r} belongs to another configuration "
                                  f"(run key {run_key(saved)}, this config {run_key(config)}); "
                                  "use another --out directory")
        return checkpoint
    if not resume and (run_dir / CHECKPOINT_NAME).exists():
        state = "a finished" if (run_dir / "result.json").exists() else "an unfinished"
        raise FileExistsError(f"{str(run_dir)!r} already holds {state} run; use another --out, or --resume")
    return None


def _start_run(config: RunConfig, world: World, resume: bool) -> _Run:
    """Build data, model, optimizer, loader and budget (seeded), restore them when resuming, and write
    the run's start files."""
    device = world.device(config.run.device)
    # run.num_threads = 0: the shared policy (cores / processes, minus what other work keeps busy)
    threads = configure_threads(config.run.num_threads or None, processes=world.world_size)
    checkpoint = _open_run_dir(config, world, device, resume)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    data = load_run_data(config)
    _check_model_size(config, data)
    model = build_model(config.model.name, data, **config.model.options).to(device)
    net = world.wrap_model(model)  # DDP under torch.distributed; `model` itself is saved and evaluated
    optimizer = create_optimizer(
        config.optimizer.name, model.parameters(), base_optimizer=config.optimizer.base, model=net,
        seed=config.seed, **base_optimizer_kwargs(config), **config.optimizer.settings)
    loader_generator = torch.Generator().manual_seed(config.seed)
    train_sampler = world.train_sampler(data.train, loader_generator)
    if getattr(model, "length_bucketing", False) and world.world_size == 1:
        # length bucketing: batches of similar sentence lengths for a model that trims to the longest
        lengths = (data.train.inputs != int(data.info.get("pad_index", 0))).sum(1)
        train_sampler = LengthGroupedSampler(lengths, config.batch_size, loader_generator)
    train_loader = DataLoader(data.train, batch_size=world.local_batch_size(config.batch_size), sampler=train_sampler)
    budget = resolve_budget(config, len(train_loader))
    run = _Run(config=config, world=world, run_dir=Path(config.run.out_dir), device=device, threads=threads,
               data=data, model=model, net=net, optimizer=optimizer, train_loader=train_loader,
               loader_generator=loader_generator, replay=StepRngReplay(config.optimizer.same_dropout_masks),
               budget=budget, tilt_scheduler=make_tilt_scheduler(config, optimizer, budget.total_steps),
               loss_fn=training_loss(data, config.label_smoothing),  # regression for STS-B
               eval_loss_fn=evaluation_loss(data),
               loss_subset=torch.utils.data.Subset(data.train, range(min(TRAIN_LOSS_SUBSET, len(data.train)))))
    if checkpoint is not None:
        _restore(run, checkpoint)
    if world.is_main:
        _write_start_files(run)
    return run


def _restore(run: _Run, checkpoint: dict[str, Any]) -> None:
    """Model, optimizer, tilt schedule, RNGs and counters from the checkpoint (its structure checked
    against this run); the epochs so far from metrics.csv (written before the checkpoint)."""
    check_resume_state(checkpoint, run.run_dir / CHECKPOINT_NAME, run.budget, run.model, run.optimizer,
                       _restore_rng_states, run.loader_generator, run.tilt_scheduler,
                       load_training_state=lambda: run.world.load_training_state(
                           run.run_dir, run.model, run.optimizer, checkpoint["model"], checkpoint["optimizer"]))
    run.epoch, run.step = checkpoint["epoch"], checkpoint["step"]
    run.train_seconds, run.wall_seconds = checkpoint["train_seconds"], checkpoint["wall_seconds"]
    try:
        run.rows = read_metrics(run.run_dir)[:run.epoch]
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        first = " ".join(str(exc).split("\n")[0].split())[:200]
        raise CheckpointError(f"{str(run.run_dir / 'metrics.csv')!r} cannot be read ({type(exc).__name__}: {first}); "
                              "not resuming (move the run directory away to start the run again)") from None
    if len(run.rows) < run.epoch:  # a run directory of an older version kept its epochs in the checkpoint
        run.rows = [dict(row) for row in checkpoint.get("metrics", [])][:run.epoch]
    if len(run.rows) < run.epoch:
        raise CheckpointError(f"{str(run.run_dir / 'metrics.csv')!r} holds {len(run.rows)} epoch(s), but the "
                              f"checkpoint is of epoch {run.epoch}; the run directory is incomplete")
    run.ess_warning = checkpoint.get("ess_warning") or next(
        (r["ess_warning"] for r in checkpoint.get("metrics", []) if r.get("ess_warning")), None)


def _write_start_files(run: _Run) -> None:
    config, budget = run.config, run.budget
    save_config(config, run.run_dir)
    atomic_write_text(run.run_dir / "run.json", _json.dumps({
        "run_key": run_key(config), "seed": config.seed, "label": config.display_label,
        "package_version": __version__, "git_commit": git_commit(), "budget": budget.description,
        "total_steps": budget.total_steps, "steps_per_epoch": budget.steps_per_epoch,
        "grad_evals_per_step": budget.grad_evals_per_step, "data": run.data.info,
        "world_size": run.world.world_size, "torch_version": torch.__version__,
        "threads": run.threads.as_dict()}, indent=2) + "\n")
    write_metrics(run.run_dir, run.rows)


# ---------------------------------------------------------------------- one epoch
def _train_epoch(run: _Run) -> dict[str, Any]:
    """Optimizer steps until the epoch or the budget ends; the epoch's training sums, reduced over ranks."""
    sums = {"loss": 0.0, "correct": 0.0, "count": 0, "objective": 0.0, "ess": [], "tilts": [], "steps": 0}
    if hasattr(run.train_loader.sampler, "set_epoch"):  # a DistributedSampler reshuffles per epoch
        run.train_loader.sampler.set_epoch(run.epoch)
    for inputs, targets in run.train_loader:
        if run.done:
            break
        first = _train_step(run, inputs.to(run.device), torch.as_tensor(targets).to(run.device))
        run.step += 1
        if run.tilt_scheduler is not None:
            run.tilt_scheduler.step()
        last = run.optimizer.last_step
        sums["loss"] += float(first["loss"]) * first["count"]
        sums["correct"] += float(first["correct"])
        sums["count"] += first["count"]
        sums["objective"] += last.objective
        sums["ess"].append(last.effective_sample_size)
        if getattr(run.optimizer, "auto_tilt", False):  # tilt="auto" chooses t per step: log the epoch's mean
            sums["tilts"].append(last.extra["tilt"])
        sums["steps"] += 1
        run.progress.update(1)
        if run.step % 10 == 0 or run.done:
            run.progress.set_postfix(epoch=run.epoch + 1, loss=f"{sums['loss'] / sums['count']:.3f}",
                                     acc=f"{sums['correct'] / sums['count']:.3f}")
    # this rank's training sums -> the whole global batch's (identity in one process)
    totals = run.world.reduce_mean(torch.tensor([sums["loss"], sums["correct"], sums["count"]], dtype=torch.float64))
    sums["loss"], sums["correct"], sums["count"] = float(totals[0]), float(totals[1]), float(totals[2])
    return sums


def _train_step(run: _Run, inputs: Tensor, targets: Tensor) -> dict[str, Any]:
    """One ``optimizer.step(closure)``; returns the mini-batch loss/accuracy at the step's first point.
    Raises :class:`RunDiverged` on a non-finite loss."""
    first: dict[str, Any] = {}

    def closure(evaluation) -> Tensor:
        # sub-batch ascent: the direction-only evaluations use a fraction of the batch
        used_inputs, used_targets = evaluation.batch(inputs, targets)
        outputs = run.net(used_inputs)
        loss = run.loss_fn(outputs, used_targets)
        loss.backward()
        if not first:
            first["loss"] = loss.detach()
            first["correct"] = (outputs.detach().argmax(1) == used_targets).sum()
            first["count"] = len(used_targets)
        return loss

    where = f"run diverged at step {run.step + 1} (epoch {run.epoch + 1})"
    try:
        run.replay.save()  # every evaluation of this step sees the same dropout masks (harness/dropout.py)
        run.optimizer.step(run.replay.wrap(closure))
    except NonFiniteLossError as exc:
        raise RunDiverged(f"{where}: the optimizer met a non-finite loss ({' '.join(str(exc).split())}); "
                          "lower optimizer.lr or check the data") from None
    if not math.isfinite(float(first["loss"])):
        raise RunDiverged(f"{where}: the training loss is {float(first['loss'])}; lower optimizer.lr (now "
                          f"{run.config.optimizer.lr:g}) or check the data; "
                          + (f"the last checkpoint is of epoch {run.epoch}" if run.epoch else "no checkpoint was written"))
    return first


# ---------------------------------------------------------------------- evaluate and record
def _evaluate_epoch(run: _Run, sums: dict[str, Any], epoch_start: float) -> dict[str, Any]:
    """The epoch's metrics row: training sums, loss at θ on the fixed subset, validation and test.
    Raises :class:`RunDiverged` when the model's parameters are no longer finite."""
    run.train_seconds += time.perf_counter() - epoch_start
    run.epoch += 1
    config, model = run.config, run.model
    batch, device, world = config.run.eval_batch_size, run.device, run.world
    loss_at_theta, _ = evaluate(model, run.loss_subset, run.loss_fn, batch, device, world)
    val_loss, val_acc = evaluate(model, run.data.val, run.eval_loss_fn, batch, device, world)
    test_loss, test_acc = evaluate(model, run.data.test, run.eval_loss_fn, batch, device, world)
    run.wall_seconds += time.perf_counter() - epoch_start
    count = max(sums["count"], 1)
    row = {
        "epoch": run.epoch, "step": run.step, "grad_evals": run.budget.evals_after(run.step),
        "train_seconds": round(run.train_seconds, 4), "wall_seconds": round(run.wall_seconds, 4),
        "lr": run.optimizer.param_groups[0]["lr"],
        "train_loss": sums["loss"] / count, "train_acc": sums["correct"] / count,
        "train_objective": sums["objective"] / max(sums["steps"], 1), "train_loss_at_theta": loss_at_theta,
        "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
        "tilt": finite_mean(sums["tilts"]) if sums["tilts"] else float(getattr(run.optimizer, "tilt", float("nan"))),
        "effective_sample_size": finite_mean(sums["ess"]),
    }
    row.update(task_metrics(model, run.data, batch, device))  # a task's official metrics ({} unless GLUE)
    if not math.isfinite(row["train_loss"]) or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        # the last step of the epoch left non-finite weights: nothing of it is saved
        raise RunDiverged(f"run diverged in epoch {run.epoch}: the model's parameters are no longer finite "
                          f"(training loss {row['train_loss']}); lower optimizer.lr (now "
                          f"{config.optimizer.lr:g}); the last checkpoint is of epoch {run.epoch - 1}")
    return row


def _record_epoch(run: _Run, row: dict[str, Any], on_epoch: Callable[[dict[str, Any]], None] | None) -> None:
    """Warn once about a degenerate tilt, append the row to metrics.csv, then write the checkpoint
    (in this order: a crash between the two leaves an extra row that resume drops)."""
    message = ess_message(row["effective_sample_size"], run.num_samples)
    if message and run.ess_warning is None:  # once per run
        run.ess_warning = f"epoch {run.epoch}: {message}"
        if run.world.is_main:
            warnings.warn(f"{run.config.display_label}: {run.ess_warning}", TiltDiagnosticWarning,
                          stacklevel=4)  # _record_epoch, train, its run-directory lock wrapper, the caller
    run.rows.append(row)
    # every rank: a sharded world writes its shards here (a collective), rank 0 the rest
    model_state, optimizer_state = run.world.training_state(run.run_dir, run.model, run.optimizer)
    if not run.world.is_main:
        return
    verify_held(run.run_dir)  # still ours, still there: a deleted run directory is not recreated
    write_metrics(run.run_dir, run.rows)
    save_checkpoint(run.run_dir / CHECKPOINT_NAME, {
        "config": json.loads(json.dumps(to_dict(run.config))), "model": model_state,
        "optimizer": optimizer_state, "epoch": run.epoch, "step": run.step,
        "tilt_scheduler": None if run.tilt_scheduler is None else run.tilt_scheduler.state_dict(),
        "grad_evals": run.budget.evals_after(run.step), "train_seconds": run.train_seconds,
        "wall_seconds": run.wall_seconds, "rng": _rng_states(run.loader_generator),
        "ess_warning": run.ess_warning, "finished": run.done})
    if on_epoch is not None:
        on_epoch(row)


def _finish_run(run: _Run) -> dict[str, Any]:
    """The result dict, written to result.json by the main process."""
    config, budget = run.config, run.budget
    ess = finite_mean([r["effective_sample_size"] for r in run.rows]) if run.num_samples else None
    result = {
        "format": RESULT_FORMAT, "package_version": __version__, "run_key": run_key(config),
        "label": config.display_label, "optimizer": config.optimizer.name, "seed": config.seed,
        "epochs": run.epoch, "steps": run.step, "grad_evals": budget.evals_after(run.step),
        "grad_evals_per_step": budget.grad_evals_per_step, "budget": budget.description,
        "train_seconds": run.train_seconds, "wall_seconds": run.wall_seconds, "threads": run.threads.threads,
        "mean_effective_sample_size": ess if ess is not None and math.isfinite(ess) else None,  # JSON holds no NaN
        "ess_warning": run.ess_warning, "accuracy_unit": ACCURACY_UNIT,
        **summarize(run.rows),
    }
    result.update(summary_metrics(run.rows, [r["epoch"] for r in run.rows].index(result["best_val_epoch"])))
    if run.world.is_main:
        verify_held(run.run_dir)
        write_result(run.run_dir, result)
    return result
