"""One training run, readable top to bottom: :func:`train`.

    config -> data splits -> model -> optimizer (by registry name) -> budget in steps
    for each epoch:   shuffle (own generator) -> optimizer.step(closure) per batch -> evaluate
                      val and test -> append a metrics row -> write the checkpoint atomically
    -> result.json (final-epoch and best-validation-epoch test accuracy, time, gradient evaluations)

The run directory (``config.run.out_dir``) holds ``config.toml``/``config.json`` (resolved),
``run.json`` (seed, run key, package version, git commit), ``metrics.csv`` (one row per epoch),
``checkpoint.pt`` and, at the end, ``result.json``. ``resume=True`` continues from the checkpoint
and reproduces an uninterrupted run exactly: model, optimizer (with its noise generator), the
global RNGs and the shuffling generator are all restored.

Distributed training slots in through :class:`World` (rank, world size, a sampler for the training
split, a reduction for metrics, main-process-only output); this module itself runs one process.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import _json
from .._atomic import remove_stale_temporaries
from .checkpoints import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, atomic_write_text, from_dict, identity_dict, run_key, save_config
from .dropout import StepRngReplay

__all__ = ["World", "Budget", "train", "resolve_budget", "evaluate", "dataset_kwargs", "git_commit",
           "METRIC_COLUMNS", "RunInterrupted", "RunDiverged", "read_result", "check_run", "check_device",
           "check_optimizer_settings", "MAX_MODEL_BYTES_FRACTION"]

RESULT_FORMAT = "tiltedsam.result/1"

#: columns of metrics.csv, in order
METRIC_COLUMNS = [
    "epoch", "step", "grad_evals", "train_seconds", "wall_seconds", "lr",
    "train_loss", "train_acc", "train_objective", "train_loss_at_theta", "val_loss", "val_acc", "test_loss",
    "test_acc", "tilt", "effective_sample_size",
]

#: size of the fixed training subset on which every optimizer's training loss at θ is measured
#: after each epoch (the same points for every optimizer, so the curves compare like with like)
TRAIN_LOSS_SUBSET = 512


class RunInterrupted(RuntimeError):
    """Raised by :func:`train` when ``stop_after_epochs`` stops a run early (the checkpoint is on disk)."""


class RunDiverged(RuntimeError):
    """Raised by :func:`train` when the training loss (or the evaluated model) is no longer finite.

    The run stops at once: no checkpoint or result of the diverged state is written (the last
    checkpoint, of the last finite epoch, stays), and the sweep marks the run ``failed``.
    """


#: refuse models whose parameters alone would take more than this fraction of the machine's memory
MAX_MODEL_BYTES_FRACTION = 0.5


@dataclass
class World:
    """The process group a run lives in. One process: rank 0 of 1.

    A distributed launcher replaces :meth:`train_sampler` (a ``DistributedSampler``) and
    :meth:`reduce_mean` (an all-reduce); only the main process writes files and shows progress.
    """

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


def optimizer_settings(config: RunConfig) -> dict[str, Any]:
    return dict(config.optimizer.settings)


def base_optimizer_kwargs(config: RunConfig) -> dict[str, Any]:
    """``lr``, ``weight_decay`` and, for base optimizers that have one (SGD), ``momentum``: Adam and
    AdamW take no ``momentum`` (their ``betas`` go in ``optimizer.settings``)."""
    import inspect

    from ..optim.registry import resolve_base_optimizer

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


def check_optimizer_settings(config: RunConfig) -> None:
    """Unknown keys of ``optimizer.settings`` are named (not left to a ``TypeError`` of the base
    optimizer's ``__init__``), and bad values give :class:`ConfigError`: the optimizer is built
    once on a one-element dummy parameter."""
    import inspect

    from ..optim.registry import ALIASES, REGISTRY, create_optimizer, resolve_base_optimizer

    name = config.optimizer.name
    key = ALIASES.get(name.lower(), name.lower())
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
                         **base_optimizer_kwargs(config), **optimizer_settings(config))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer {name!r} rejects its settings {config.optimizer.settings}: "
                          f"{' '.join(str(exc).split())}") from None


def check_run(config: RunConfig, stop_after_epochs: int | None = None) -> None:
    """Everything about ``config`` that can be checked without data: device, optimizer settings,
    budget, ``stop_after_epochs``. Raises :class:`ConfigError` naming the key."""
    if stop_after_epochs is not None and (isinstance(stop_after_epochs, bool) or stop_after_epochs < 1):
        raise ConfigError(f"stop_after_epochs = {stop_after_epochs!r} is invalid; allowed: an integer >= 1")
    check_device(config.run.device)
    check_optimizer_settings(config)
    try:
        resolve_budget(config, steps_per_epoch=1)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"budget: {' '.join(str(exc).split())}") from None


def _check_model_size(config: RunConfig, data: Any) -> None:
    """Build the model on the ``meta`` device (no memory) and refuse it when its parameters alone
    would take more than :data:`MAX_MODEL_BYTES_FRACTION` of the machine's memory."""
    from .models import build_model

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
    """Turn ``config.budget`` into a number of steps.

    ``epochs``: ``amount * steps_per_epoch``; ``steps``: ``amount``; ``grad_evals``: the largest
    number of steps whose gradient evaluations fit in ``amount``. With ``match_optimizer``, the
    amount is first converted to the gradient evaluations *that* optimizer would spend, so SAM
    matched to TSAM (``s`` samples, 2 evaluations each) runs ``2 s / 2 = s`` times as many steps.
    """
    from ..optim.registry import REGISTRY, grad_evals_per_step

    budget = config.budget
    own_evals = grad_evals_per_step(config.optimizer.name, **optimizer_settings(config))
    match = budget.match_optimizer or getattr(REGISTRY[config.optimizer.name], "budget_reference", None)
    if match:
        reference_evals = grad_evals_per_step(match, **budget.match_settings)
        steps_of = {"epochs": budget.amount * steps_per_epoch, "steps": budget.amount,
                    "grad_evals": math.floor(budget.amount / reference_evals + 1e-9)}[budget.kind]
        evals = steps_of * reference_evals
        description = (f"{budget.amount} {budget.kind} of {match} "
                       f"({reference_evals} evals/step) = {evals} gradient evaluations")
    elif budget.kind == "epochs":
        return Budget(budget.amount * steps_per_epoch, steps_per_epoch, own_evals, f"{budget.amount} epochs")
    elif budget.kind == "steps":
        return Budget(budget.amount, steps_per_epoch, own_evals, f"{budget.amount} steps")
    else:
        evals = budget.amount
        description = f"{evals} gradient evaluations"
    total_steps = math.floor(evals / own_evals + 1e-9)  # own_evals may be fractional (cheap TSAM variants)
    if total_steps < 1:
        raise ValueError(f"budget.amount={budget.amount} ({description}) is less than one step of "
                         f"{config.optimizer.name} ({own_evals} gradient evaluations per step)")
    return Budget(total_steps, steps_per_epoch, own_evals, description)


def make_tilt_scheduler(config: RunConfig, optimizer: Any, total_steps: int) -> Any:
    """A :class:`tiltedsam.optim.schedules.TiltScheduler` over the whole run, or None for a constant tilt."""
    kind = config.optimizer.tilt_schedule
    if kind == "constant":
        return None
    if not hasattr(optimizer, "tilt"):
        raise ValueError(f"optimizer.tilt_schedule={kind!r} needs an optimizer with a tilt (TSAM), "
                         f"got {config.optimizer.name!r}")
    try:
        from ..optim.schedules import TiltScheduler
    except ModuleNotFoundError as exc:  # pragma: no cover - older installations
        raise ValueError("optimizer.tilt_schedule needs tiltedsam.optim.schedules, missing here") from exc
    return TiltScheduler(optimizer, kind=kind, total_steps=total_steps)


def dataset_kwargs(config: RunConfig) -> dict[str, Any]:
    d = config.data
    return {"seed": config.seed, "label_noise": d.label_noise, "val_fraction": d.val_fraction,
            "test_fraction": d.test_fraction, "clean_validation": d.clean_validation, "data_dir": d.data_dir,
            "augment": d.augment, "limit": d.limit, "split_seed": d.split_seed, "noise_seed": d.noise_seed,
            **d.options}


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


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final-epoch and best-validation-epoch numbers of a list of metric rows."""
    final = rows[-1]
    best = max(rows, key=lambda r: (r["val_acc"] if math.isfinite(r["val_acc"]) else -1.0, -r["epoch"]))
    return {
        "final_epoch": final["epoch"], "final_val_acc": final["val_acc"], "final_test_acc": final["test_acc"],
        "final_test_loss": final["test_loss"], "final_train_loss": final["train_loss"],
        "best_val_epoch": best["epoch"], "best_val_acc": best["val_acc"], "best_val_test_acc": best["test_acc"],
    }


def read_result(run_dir: str | Path) -> dict[str, Any]:
    """The ``result.json`` of a finished run, checked for format."""
    file = Path(run_dir) / "result.json"
    if not file.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a finished tiltedsam run directory (no result.json)")
    try:
        result = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{str(file)!r} is not a readable result file: {exc.__class__.__name__}") from None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        found = result.get("format") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"{str(file)!r} has format {found!r}, expected {RESULT_FORMAT!r} "
                         "(written by another tiltedsam version)")
    return result


def train(config: RunConfig, *, resume: bool = False, stop_after_epochs: int | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, world: World | None = None) -> dict[str, Any]:
    """Run ``config`` to the end of its budget and return the result dict (also ``result.json``).

    Args:
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (its config must match).
        stop_after_epochs: stop (raise :class:`RunInterrupted`) once this many epochs are done in
            total, after writing the checkpoint; simulates an interruption.
        on_epoch: called with each new metrics row (the sweep stores them in its database).

    Raises :class:`ConfigError` for a config that cannot run here (device, optimizer settings,
    model size), :class:`CheckpointError` for a checkpoint that is corrupt, not plain data or of
    another config, and :class:`RunDiverged` when the training loss stops being finite (whether or
    not the optimizer itself raises :class:`tiltedsam.tilt.NonFiniteLossError`).
    """
    from .._version import __version__
    from ..optim.registry import create_optimizer
    from .data import load_dataset
    from .models import build_model

    from ..tilt import NonFiniteLossError
    from .._threads import configure_threads
    from ..optim.diagnostics import TiltDiagnosticWarning, ess_message

    world = world or World()
    run_dir = Path(config.run.out_dir)
    check_run(config, stop_after_epochs)
    if world.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"run.out_dir = {str(run_dir)!r} cannot be used as a run directory: "
                              f"{exc.strerror or exc}") from None
    device = world.device(config.run.device)
    # run.num_threads = 0: the shared policy (cores / processes, minus what other work keeps busy)
    threads = configure_threads(config.run.num_threads or None, processes=world.world_size)

    # ---- resume or start fresh
    checkpoint = None
    if resume and world.is_main:  # leftovers of a write that a killed process never finished
        remove_stale_temporaries(run_dir)
    if resume and (run_dir / CHECKPOINT_NAME).is_file():
        checkpoint = load_checkpoint(run_dir, map_location=device)
        saved = from_dict(RunConfig, checkpoint["config"])
        if identity_dict(saved) != identity_dict(config):
            raise CheckpointError(f"the checkpoint in {str(run_dir)!r} belongs to another configuration "
                                  f"(run key {run_key(saved)}, this config {run_key(config)}); "
                                  "use another --out directory")
    elif not resume and (run_dir / CHECKPOINT_NAME).exists():
        state = "a finished" if (run_dir / "result.json").exists() else "an unfinished"
        raise FileExistsError(f"{str(run_dir)!r} already holds {state} run; use another --out, or --resume")

    # ---- data, model, optimizer: seeded so that the same config builds the same run
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    data = load_dataset(config.data.name, **dataset_kwargs(config))
    _check_model_size(config, data)
    model = build_model(config.model.name, data, **config.model.options).to(device)
    net = world.wrap_model(model)  # DDP under torch.distributed; `model` itself is saved and evaluated
    optimizer = create_optimizer(
        config.optimizer.name, model.parameters(), base_optimizer=config.optimizer.base, model=net,
        seed=config.seed, **base_optimizer_kwargs(config), **optimizer_settings(config))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    eval_loss_fn = nn.CrossEntropyLoss()  # validation/test loss: the plain empirical loss
    loader_generator = torch.Generator().manual_seed(config.seed)
    train_sampler = world.train_sampler(data.train, loader_generator)
    if getattr(model, "length_bucketing", False) and world.world_size == 1:
        # length bucketing: batches of similar sentence lengths for a model that trims to the longest
        from .data import LengthGroupedSampler

        lengths = (data.train.inputs != int(data.info.get("pad_index", 0))).sum(1)
        train_sampler = LengthGroupedSampler(lengths, config.batch_size, loader_generator)
    train_loader = DataLoader(data.train, batch_size=world.local_batch_size(config.batch_size), sampler=train_sampler)
    replay = StepRngReplay(config.optimizer.same_dropout_masks)
    budget = resolve_budget(config, len(train_loader))
    tilt_scheduler = make_tilt_scheduler(config, optimizer, budget.total_steps)

    rows: list[dict[str, Any]] = []
    epoch = step = 0
    train_seconds = wall_seconds = 0.0
    if checkpoint is not None:
        world.load_training_state(run_dir, model, optimizer, checkpoint["model"], checkpoint["optimizer"])
        if tilt_scheduler is not None:
            tilt_scheduler.load_state_dict(checkpoint["tilt_scheduler"])
        _restore_rng_states(checkpoint["rng"], loader_generator)
        rows = list(checkpoint["metrics"])
        epoch, step = checkpoint["epoch"], checkpoint["step"]
        train_seconds, wall_seconds = checkpoint["train_seconds"], checkpoint["wall_seconds"]
    if world.is_main:
        save_config(config, run_dir)
        atomic_write_text(run_dir / "run.json", _json.dumps({
            "run_key": run_key(config), "seed": config.seed, "label": config.display_label,
            "package_version": __version__, "git_commit": git_commit(), "budget": budget.description,
            "total_steps": budget.total_steps, "steps_per_epoch": budget.steps_per_epoch,
            "grad_evals_per_step": budget.grad_evals_per_step, "data": data.info, "world_size": world.world_size,
            "torch_version": torch.__version__, "threads": threads.as_dict()}, indent=2) + "\n")
        _write_metrics(run_dir / "metrics.csv", rows)

    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (a redirected log gets no carriage-return flood)
    progress = tqdm(total=budget.total_steps, initial=step, desc=config.display_label, unit="step",
                    disable=None if (config.run.progress and world.is_main) else True, leave=False,
                    dynamic_ncols=True)
    # the same fixed training examples for every optimizer and epoch: loss at θ, compared like with like
    loss_subset = torch.utils.data.Subset(data.train, range(min(TRAIN_LOSS_SUBSET, len(data.train))))
    num_samples = getattr(optimizer, "hyperparameters", {}).get("num_samples")
    ess_warning = next((r.get("ess_warning") for r in rows if r.get("ess_warning")), None)
    model.train()
    while step < budget.total_steps:
        # ---- one epoch (the last one may be partial when the budget is in steps or evaluations)
        epoch_start = time.perf_counter()
        sums = {"loss": 0.0, "correct": 0.0, "count": 0, "objective": 0.0, "ess": [], "tilts": [], "steps": 0}
        if hasattr(train_loader.sampler, "set_epoch"):  # a DistributedSampler reshuffles per epoch
            train_loader.sampler.set_epoch(epoch)
        for inputs, targets in train_loader:
            if step >= budget.total_steps:
                break
            inputs, targets = inputs.to(device), torch.as_tensor(targets).to(device)
            first_evaluation: dict[str, Any] = {}

            def closure(evaluation) -> Tensor:
                # sub-batch ascent: the direction-only evaluations use a fraction of the batch
                used_inputs, used_targets = evaluation.batch(inputs, targets)
                outputs = net(used_inputs)
                loss = loss_fn(outputs, used_targets)
                loss.backward()
                if not first_evaluation:  # the mini-batch loss/accuracy at the step's first point
                    first_evaluation["loss"] = loss.detach()
                    first_evaluation["correct"] = (outputs.detach().argmax(1) == used_targets).sum()
                    first_evaluation["count"] = len(used_targets)
                return loss

            try:
                replay.save()  # every evaluation of this step sees the same dropout masks (harness/dropout.py)
                optimizer.step(replay.wrap(closure))
            except NonFiniteLossError as exc:
                progress.close()
                raise RunDiverged(f"run diverged at step {step + 1} (epoch {epoch + 1}): the optimizer met a "
                                  f"non-finite loss ({' '.join(str(exc).split())}); lower optimizer.lr or "
                                  "check the data") from None
            if not math.isfinite(float(first_evaluation["loss"])):
                progress.close()
                raise RunDiverged(f"run diverged at step {step + 1} (epoch {epoch + 1}): the training loss is "
                                  f"{float(first_evaluation['loss'])}; lower optimizer.lr (now "
                                  f"{config.optimizer.lr:g}) or check the data; "
                                  + (f"the last checkpoint is of epoch {epoch}" if epoch else "no checkpoint was written"))
            step += 1
            if tilt_scheduler is not None:
                tilt_scheduler.step()
            sums["loss"] += float(first_evaluation["loss"]) * first_evaluation["count"]
            sums["correct"] += float(first_evaluation["correct"])
            sums["count"] += first_evaluation["count"]
            sums["objective"] += optimizer.last_step.objective
            sums["ess"].append(optimizer.last_step.effective_sample_size)
            if getattr(optimizer, "auto_tilt", False):  # tilt="auto" chooses t per step: log the epoch's mean
                sums["tilts"].append(optimizer.last_step.extra["tilt"])
            sums["steps"] += 1
            progress.update(1)
            if step % 10 == 0 or step == budget.total_steps:
                progress.set_postfix(epoch=epoch + 1, loss=f"{sums['loss'] / sums['count']:.3f}",
                                     acc=f"{sums['correct'] / sums['count']:.3f}")
        train_seconds += time.perf_counter() - epoch_start
        epoch += 1
        # this rank's training sums -> the whole global batch's (identity in one process)
        totals = world.reduce_mean(torch.tensor([sums["loss"], sums["correct"], sums["count"]], dtype=torch.float64))
        sums["loss"], sums["correct"], sums["count"] = float(totals[0]), float(totals[1]), float(totals[2])

        # ---- evaluate, record, checkpoint
        loss_at_theta, _ = evaluate(model, loss_subset, loss_fn, config.run.eval_batch_size, device, world)
        val_loss, val_acc = evaluate(model, data.val, eval_loss_fn, config.run.eval_batch_size, device, world)
        test_loss, test_acc = evaluate(model, data.test, eval_loss_fn, config.run.eval_batch_size, device, world)
        wall_seconds += time.perf_counter() - epoch_start
        row = {
            "epoch": epoch, "step": step, "grad_evals": budget.evals_after(step),
            "train_seconds": round(train_seconds, 4), "wall_seconds": round(wall_seconds, 4),
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": sums["loss"] / max(sums["count"], 1), "train_acc": sums["correct"] / max(sums["count"], 1),
            "train_objective": sums["objective"] / max(sums["steps"], 1), "train_loss_at_theta": loss_at_theta,
            "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
            "tilt": _mean(sums["tilts"]) if sums["tilts"] else float(getattr(optimizer, "tilt", float("nan"))),
            "effective_sample_size": _mean(sums["ess"]),
        }
        if not math.isfinite(row["train_loss"]) or not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            progress.close()  # the last step of the epoch left non-finite weights: nothing of it is saved
            raise RunDiverged(f"run diverged in epoch {epoch}: the model's parameters are no longer finite "
                              f"(training loss {row['train_loss']}); lower optimizer.lr (now "
                              f"{config.optimizer.lr:g}); the last checkpoint is of epoch {epoch - 1}")
        message = ess_message(row["effective_sample_size"], num_samples)
        if message and ess_warning is None:  # once per run
            ess_warning = row["ess_warning"] = f"epoch {epoch}: {message}"
            if world.is_main:
                warnings.warn(f"{config.display_label}: {ess_warning}", TiltDiagnosticWarning, stacklevel=2)
        rows.append(row)
        model_state, optimizer_state = world.training_state(run_dir, model, optimizer)  # sharded: a collective
        if world.is_main:
            save_checkpoint(run_dir / CHECKPOINT_NAME, {
                "config": json.loads(json.dumps(_config_dict(config))), "model": model_state,
                "optimizer": optimizer_state, "epoch": epoch, "step": step,
                "tilt_scheduler": None if tilt_scheduler is None else tilt_scheduler.state_dict(),
                "grad_evals": budget.evals_after(step), "train_seconds": train_seconds,
                "wall_seconds": wall_seconds, "rng": _rng_states(loader_generator), "metrics": rows,
                "finished": step >= budget.total_steps})
            _write_metrics(run_dir / "metrics.csv", rows)
            if on_epoch is not None:
                on_epoch(row)
        world.barrier()
        if stop_after_epochs is not None and epoch >= stop_after_epochs and step < budget.total_steps:
            progress.close()
            raise RunInterrupted(f"stopped after epoch {epoch} (step {step} of {budget.total_steps}); "
                                 f"resume with --resume")
    progress.close()

    result = {
        "format": RESULT_FORMAT, "package_version": __version__, "run_key": run_key(config),
        "label": config.display_label, "optimizer": config.optimizer.name, "seed": config.seed,
        "epochs": epoch, "steps": step, "grad_evals": budget.evals_after(step),
        "grad_evals_per_step": budget.grad_evals_per_step, "budget": budget.description,
        "train_seconds": train_seconds, "wall_seconds": wall_seconds, "threads": threads.threads,
        "mean_effective_sample_size": _mean([r["effective_sample_size"] for r in rows]) if num_samples else None,
        "ess_warning": ess_warning,
        **summarize(rows),
    }
    if result["mean_effective_sample_size"] is not None and not math.isfinite(result["mean_effective_sample_size"]):
        result["mean_effective_sample_size"] = None  # JSON holds no NaN
    if world.is_main:
        atomic_write_text(run_dir / "result.json", _json.dumps(result, indent=2) + "\n")
    return result


def _config_dict(config: RunConfig) -> dict[str, Any]:
    from .config import to_dict

    return to_dict(config)
