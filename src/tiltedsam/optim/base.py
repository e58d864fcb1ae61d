"""The driver every perturbation-based optimizer (ERM, SAM, TSAM, the baselines) is built on.

A perturbation optimizer wraps a *base* optimizer (SGD, Adam, ...) and shares its ``param_groups``.
One step of every optimizer is :meth:`PerturbationOptimizer.manual_step`: snapshot ``theta``; run the
optimizer's step program (:meth:`~PerturbationOptimizer._program`), a generator that moves the
parameters and ``yield``s a :class:`Request` whenever it needs the loss and gradient there, which the
caller answers through an :class:`Evaluation`; restore ``theta`` bit-exactly (also when a loss is
non-finite or the loop is left early); write the combined gradient to ``.grad``, record
:class:`StepDiagnostics` and let the base optimizer step. :meth:`~PerturbationOptimizer.step` runs the
same driver with a closure, so both give the same update by construction.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..tilt import NonFiniteLossError
from ..functional import _is_number, check_hyperparameter, restore, snapshot
from .distributed import DistributedSync, resolve_distributed, scalar_loss_value

__all__ = ["PerturbationOptimizer", "Evaluation", "Request", "Point", "StepDiagnostics", "frozen_batchnorm_stats",
           "check_param_group", "NONFINITE_POLICIES", "BASE_OPTIMIZERS", "resolve_base_optimizer",
           "closure_takes_evaluation"]

#: What an optimizer does when a loss it needs is NaN or infinite (see ``PerturbationOptimizer``).
NONFINITE_POLICIES = ("raise", "ignore")


#: base optimizers that may be given by name (``TSAM(params, "adam")``, ``create_optimizer(..., base_optimizer="sgd")``)
BASE_OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def resolve_base_optimizer(base: Any) -> type[Optimizer] | Callable[..., Optimizer]:
    """The one resolution of a base optimizer: a name (case-insensitive key of :data:`BASE_OPTIMIZERS`) -> its
    class; an Optimizer class, or a factory ``f(param_groups, **kwargs)``, is returned unchanged; anything else
    (an optimizer *instance*, a class that is not an optimizer, a number) raises ``TypeError``."""
    if isinstance(base, str):
        if base.lower() not in BASE_OPTIMIZERS:
            raise ValueError(f"unknown base optimizer {base!r}; known names: {sorted(BASE_OPTIMIZERS)} "
                             "(or pass a torch.optim.Optimizer class)")
        return BASE_OPTIMIZERS[base.lower()]
    if isinstance(base, Optimizer):  # checked first: an instance is not callable either
        raise TypeError("base_optimizer must be an optimizer *class* (e.g. torch.optim.SGD) plus its keyword "
                        f"arguments, not an instance: got {type(base).__name__} instance")
    if not callable(base) or (isinstance(base, type) and not issubclass(base, Optimizer)):
        raise TypeError(f"base optimizer must be a name {sorted(BASE_OPTIMIZERS)} or a torch.optim.Optimizer class "
                        f"(or a factory of one), got {base!r}")
    return base

_STATE_FORMAT = "tiltedsam.optimizer/1"


class Point(enum.Enum):
    """Where an evaluation is."""

    CLEAN = "clean"  # at theta itself
    NOISE = "noise"  # at a random point theta + delta (its gradient chooses an ascent direction)
    PERTURBED = "perturbed"  # at a perturbed point whose loss and gradient the update uses


@dataclass(frozen=True)
class Request:
    """One loss/gradient evaluation a step program asks for.

    ``batch_fraction``: the fraction of the mini-batch to use (``< 1`` for sub-batch ascent);
    ``ascent_only``: its gradient only chooses the perturbation, never enters the update, so under
    ``DistributedSync(local_ascent=True)`` it runs in ``model.no_sync()`` (m-sharpness);
    ``name``: a more specific label than the point's (``"step_size_1"``, ``"hmc_start"``).
    """

    point: Point
    batch_fraction: float = 1.0
    ascent_only: bool = False
    name: str | None = None

    @property
    def label(self) -> str:
        """A name for logs and error messages: ``name``, else the point's (``"clean"``, ``"noise"``, ``"perturbed"``)."""
        return self.name or self.point.value


CLEAN = Request(Point.CLEAN)
PERTURBED = Request(Point.PERTURBED)


@dataclass
class Evaluation:
    """One loss/gradient evaluation requested by the optimizer in :meth:`PerturbationOptimizer.manual_step`.

    When the loop body runs, the parameters are at the point to evaluate and their ``.grad`` are
    cleared. Compute the loss, call ``backward()`` (scaled or accumulated as you like), then
    :meth:`record` the (unscaled) loss. ``label`` and ``batch_fraction`` are the :class:`Request`'s;
    :meth:`batch` slices the batch. A ``step(closure)`` closure that takes one argument receives this object.
    """

    index: int
    request: Request
    loss: Tensor | float | None = None

    label = property(lambda self: self.request.label)
    batch_fraction = property(lambda self: self.request.batch_fraction)

    def record(self, loss: Tensor | float) -> None:
        """Hand the loss at this point back to the optimizer (its value is used for tilting/logging)."""
        self.loss = loss

    def batch(self, *tensors: Tensor) -> Any:
        """The first ``ceil(batch_fraction * B)`` rows (at least one) of each tensor of a batch of ``B``
        examples: ``x, y = evaluation.batch(x, y)``. The loaders shuffle, so these are a random sub-batch.
        Returns the tensors unchanged when ``batch_fraction == 1``; one tensor in, one tensor out."""
        if not tensors:
            raise ValueError("Evaluation.batch needs at least one tensor")
        sizes = {len(t) for t in tensors}
        if len(sizes) != 1:
            raise ValueError(f"Evaluation.batch: the tensors hold different numbers of examples {sorted(sizes)}")
        size = sizes.pop()
        fraction = self.batch_fraction
        keep = size if fraction >= 1 else max(1, math.ceil(fraction * size - 1e-9))
        sliced = tuple(t if keep == size else t[:keep] for t in tensors)
        return sliced[0] if len(sliced) == 1 else sliced


@dataclass
class StepDiagnostics:
    """What happened in the last step, for logging (not saved in ``state_dict``)."""

    objective: float = float("nan")  # the optimizer's estimate of its own objective at this step
    losses: list[float] = field(default_factory=list)  # losses at the points whose gradients are combined
    weights: list[float] = field(default_factory=list)  # their weights in the combined gradient
    effective_sample_size: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)  # optimizer-specific (noise losses, acceptance, ...)
    tilt: float | None = None  # TSAM: the t this step used (with tilt="auto": the one the rule chose)

    @classmethod
    def single_point(cls, loss: float, **extra: Any) -> "StepDiagnostics":
        """A step whose update is the gradient at one point (ERM, SAM, RSAM): that point's loss, weight 1."""
        return cls(objective=loss, losses=[loss], weights=[1.0], effective_sample_size=1.0, extra=extra)


def _hyperparameter(name: str) -> property:
    """A read-only property for the optimizer's own setting ``name`` (kept in ``hyperparameters``)."""
    return property(lambda self: self.hyperparameters[name])


def _is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module | None) -> Iterator[None]:
    """Context in which BatchNorm layers of ``model`` use batch statistics but leave their running
    statistics untouched (in train mode), by clearing ``track_running_stats`` for the duration."""
    if model is None:
        yield
        return
    touched = [m for m in model.modules() if _is_batchnorm(m) and m.track_running_stats]
    for m in touched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in touched:
            m.track_running_stats = True


def closure_takes_evaluation(closure: Callable[..., Any]) -> bool:
    """Whether ``step`` passes the :class:`Evaluation` to ``closure``: when its first positional parameter
    is required, or is named ``evaluation``. An optional one (``closure(backward=True)``, a common idiom)
    keeps its default, so existing closures behave exactly as before."""
    try:
        parameters = list(inspect.signature(closure).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    first = next((p for p in parameters if p.kind in positional), None)
    return first is not None and (first.default is inspect.Parameter.empty or first.name == "evaluation")


#: Ranges of the base optimizers' numeric settings (torch.optim's own; torch does not check finiteness).
#: A numeric setting not listed here must still be finite; tuples (``betas``) are checked per entry.
BASE_SETTING_RANGES: dict[str, dict[str, Any]] = {
    "lr": {"low": 0.0},
    "momentum": {"low": 0.0},
    "dampening": {},
    "weight_decay": {"low": 0.0},
    "eps": {"low": 0.0},
    "betas": {"low": 0.0, "high": 1.0, "high_inclusive": False},
    "alpha": {"low": 0.0},  # RMSprop's smoothing constant
    "lr_decay": {"low": 0.0},
    "initial_accumulator_value": {"low": 0.0},
}


def check_param_group(group: dict[str, Any], where: str = "", ranges: dict[str, dict[str, Any]] | None = None) -> None:
    """Check every numeric entry of a parameter group (or of a base optimizer's keyword arguments).

    Numbers (and tuples/lists of numbers, e.g. ``betas``) must be finite and inside
    ``ranges[key]`` (:data:`BASE_SETTING_RANGES` by default); ``params``, booleans, strings and
    ``None`` are not checked. ``where`` (e.g. ``" (param group 1)"``) is added to the name in errors.
    """
    ranges = BASE_SETTING_RANGES if ranges is None else ranges
    for key, value in group.items():
        known = key in ranges  # a setting that must be numeric: a string or flag there is named, not passed on
        if key == "params" or value is None or (not known and isinstance(value, (bool, str))):
            continue
        limits = ranges.get(key, {})
        if isinstance(value, (tuple, list)):
            if value and (known or all(_is_number(v) for v in value)):
                for i, entry in enumerate(value):
                    check_hyperparameter(f"{key}[{i}]{where}", entry, **limits)
        elif known or _is_number(value):
            check_hyperparameter(f"{key}{where}", value, **limits)


class PerturbationOptimizer(Optimizer):
    """Base class: a wrapped base optimizer plus a per-step perturbation program.

    Subclasses set ``hyperparameters`` (a dict of their own settings, saved in ``state_dict``),
    implement :meth:`_program` (the step) and :meth:`evaluations_for` (its cost).

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer.
        base_optimizer: the base optimizer *class* (``torch.optim.SGD``, ``torch.optim.AdamW``, ...) or its
            name in :data:`BASE_OPTIMIZERS` (``"sgd"``, ``"adam"``, ``"adamw"``).
        model: optional module; if given, its BatchNorm running statistics are updated only during the
            first evaluation of each step (so once per step, not once per evaluation).
        seed: seed of the optimizer's own noise generator. ``None`` draws one from torch's global RNG,
            so ``torch.manual_seed`` before construction makes runs reproducible. Under
            ``torch.distributed`` rank 0's seed is used on every rank (see :mod:`.distributed`).
        distributed: ``None`` (automatic: average the losses that enter the update across ranks and
            share the noise seed whenever ``torch.distributed`` is initialised), ``True``, ``False``
            or a :class:`~tiltedsam.optim.distributed.DistributedSync` (process group, m-sharpness).
        nonfinite: what a step does when a loss it evaluates is NaN or infinite. ``"raise"`` (default):
            raise :class:`~tiltedsam.tilt.NonFiniteLossError` naming the evaluation, with the parameters
            restored bit-exactly and the base optimizer (and its state) untouched. ``"ignore"``, only where
            a candidate point can be dropped (TSAM: weight zero; ESAM2: never chosen); the step still
            raises when no usable point is left. Only loss values are checked, not gradients.
        **base_kwargs: passed to ``base_optimizer`` (``lr``, ``momentum``, ``weight_decay``, ``betas``,
            ``eps``, ...). Every numeric one must be finite and in the base optimizer's range
            (:data:`BASE_SETTING_RANGES`), also inside param groups: a ``ValueError`` names it otherwise.
    """

    #: The ``nonfinite`` policies this optimizer supports (see the class docstring).
    nonfinite_policies: tuple[str, ...] = ("raise",)

    def __init__(
        self,
        params: Any,
        base_optimizer: type[Optimizer] | Callable[..., Optimizer] | str,
        hyperparameters: dict[str, Any],
        *,
        model: nn.Module | None = None,
        seed: int | None = None,
        distributed: DistributedSync | bool | None = None,
        nonfinite: str = "raise",
        **base_kwargs: Any,
    ) -> None:
        base_optimizer = resolve_base_optimizer(base_optimizer)
        self._check_base_keywords(base_optimizer, base_kwargs)
        if nonfinite not in self.nonfinite_policies:
            reason = ("" if nonfinite not in NONFINITE_POLICIES else
                      f": {type(self).__name__} updates from points it cannot drop, so there is nothing to ignore")
            raise ValueError(f"nonfinite must be one of {list(self.nonfinite_policies)} for {type(self).__name__}, "
                             f"got {nonfinite!r}{reason}")
        self.nonfinite = nonfinite
        check_param_group(base_kwargs)  # names the keyword exactly (torch would say "Invalid learning rate")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        if seed is not None:
            check_hyperparameter("seed", seed, integer=True, low=0)
        self.hyperparameters = dict(hyperparameters)
        # Our own settings stay optimizer-level (weights are global across groups), not per group.
        super().__init__(params, {})
        # The base optimizer is built on *our* groups: the dicts are shared, so its defaults (lr,
        # momentum, ...) land in them and an LR scheduler on either optimizer changes both.
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self._link_base()
        for index, group in enumerate(self.param_groups):
            self._check_group(group, index)
        self.model = model
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed
        self._generator: torch.Generator | None = None
        self._pending_generator_state: dict[str, Any] | None = None
        # DDP: subclasses forward **base_kwargs to this __init__, so `distributed=` reaches here for all.
        self.distributed = resolve_distributed(distributed)
        if self.distributed.local_ascent and (model is None or not self.has_ascent_only_evaluations):
            raise ValueError(
                "DistributedSync(local_ascent=True) needs model= (the DistributedDataParallel module) and an optimizer "
                f"with ascent evaluations (Request.ascent_only); got model={type(model).__name__} for "
                f"{type(self).__name__}{'' if self.has_ascent_only_evaluations else ', which has none'}"
            )
        self.last_step = StepDiagnostics()
        self.step_count = 0
        self._evaluation: Evaluation | None = None  # the evaluation in progress, for error messages

    def _check_base_keywords(self, base_optimizer: Any, base_kwargs: dict[str, Any]) -> None:
        """A keyword neither this optimizer nor its base optimizer takes (a typo such as ``tilte=3``) is named
        here, with both lists of settings, rather than left to the base optimizer's ``__init__``."""
        try:
            signature = inspect.signature(base_optimizer)
        except (TypeError, ValueError):  # a factory without a signature: its own error will tell
            return
        parameters = signature.parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return
        accepted = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                              inspect.Parameter.KEYWORD_ONLY)} - {"self", "params"}
        unknown = sorted(set(base_kwargs) - accepted)
        if unknown:
            own, name = sorted({*self.setting_defaults(), "model", "seed", "distributed", "nonfinite"}), getattr(
                base_optimizer, "__name__", type(base_optimizer).__name__)
            raise TypeError(f"unknown setting(s) {', '.join(map(repr, unknown))} for {type(self).__name__} on base "
                            f"optimizer {name}; {type(self).__name__} takes {', '.join(own)}; {name} takes "
                            f"{', '.join(sorted(accepted))}")

    @classmethod
    def setting_defaults(cls) -> dict[str, Any]:
        """The optimizer's own settings and their defaults, read from its constructor's keyword-only
        arguments (``model``, ``seed`` and the other plumbing excluded): the one home of the defaults."""
        plumbing = {"model", "seed", "distributed", "nonfinite", "sampler_options", "parallel_samples"}
        return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in plumbing}

    #: the gradient evaluations per step of an optimizer whose cost does not depend on its settings
    fixed_evaluations: int | None = None

    @classmethod
    def evaluations_for(cls, **settings: Any) -> int | float:
        """Gradient evaluations one step of this optimizer with ``settings`` (its own, defaults filled in)
        costs, without building it: what budgets and the registry use (see :attr:`grad_evals_per_step`)."""
        if cls.fixed_evaluations is None:
            raise NotImplementedError
        return cls.fixed_evaluations

    def _link_base(self) -> None:
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = {**self.base_optimizer.defaults, **self.hyperparameters}

    def __getstate__(self) -> dict[str, Any]:  # pickling (copy.deepcopy): keep the links
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # called from Optimizer.__init__
            return super().add_param_group(param_group)
        self.base_optimizer.add_param_group(param_group)
        self._check_group(self.param_groups[-1], len(self.param_groups) - 1)

    def _check_group(self, group: dict[str, Any], index: int) -> None:
        """Check one param group's numeric settings (extended by optimizers with per-group settings)."""
        check_param_group(group, f" (param group {index})")

    #: Whether some evaluations only choose the perturbation (``Request.ascent_only``); under
    #: ``DistributedSync(local_ascent=True)`` they run in ``model.no_sync()`` (m-sharpness).
    has_ascent_only_evaluations: bool = False
    #: Whether the step program moves the parameters (so the driver snapshots and restores them).
    moves_parameters: bool = True

    @property
    def grad_evals_per_step(self) -> int | float:
        """Gradient evaluations one :meth:`step` costs, in full-batch equivalents (closure calls weighted by
        their :attr:`Evaluation.batch_fraction`), averaged over steps; fractional for some cheap variants."""
        return self.evaluations_for(**self.hyperparameters)

    @property
    def evaluations_next_step(self) -> int | float:
        """The exact cost (as in :attr:`grad_evals_per_step`) of the next step; equal to it unless the cost
        varies from step to step (lazy ascent)."""
        return self.grad_evals_per_step

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _trainable(self) -> list[Tensor]:
        """The parameters a step moves and updates; an optimizer over frozen parameters only is an error."""
        params = self._params()
        if not params:
            count = sum(len(group["params"]) for group in self.param_groups)
            raise ValueError(f"{type(self).__name__}.step: none of its {count} parameters requires a gradient "
                             "(requires_grad=False everywhere), so there is nothing to optimize; unfreeze some "
                             "parameters or give the optimizer the trainable ones")
        return params

    @property
    def generator(self) -> torch.Generator:
        """The optimizer's own noise generator, on the device of the first parameter.

        Under ``torch.distributed`` its first creation broadcasts rank 0's seed, a collective: every
        rank must reach it (each TSAM step does, on all ranks alike)."""
        if self._generator is None:
            params = self._params()
            device = params[0].device if params else torch.device("cpu")
            gen = torch.Generator(device=device)
            pending = self._pending_generator_state
            if pending is not None and pending["device_type"] == device.type:
                gen.set_state(pending["state"])
            elif pending is not None:
                # A state from another device type (CUDA <-> CPU) cannot be loaded; reseed
                # deterministically from it so resumed runs stay reproducible.
                digest = hashlib.sha256(pending["state"].numpy().tobytes()).digest()
                gen.manual_seed(int.from_bytes(digest[:8], "little") >> 2)
                warnings.warn(
                    f"noise generator state was saved on {pending['device_type']!r} but the parameters are on "
                    f"{device.type!r}; the generator was reseeded deterministically from the saved state",
                    stacklevel=2,
                )
            else:
                # Under DDP every rank must draw the same noise: take rank 0's seed (one broadcast, once).
                self.seed = self.distributed.shared_seed(self.seed)
                gen.manual_seed(self.seed)
            self._pending_generator_state = None
            self._generator = gen
        return self._generator

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """Base optimizer state, own hyper-parameters, step count and the noise generator state."""
        if self._generator is not None:
            gen_state = {"device_type": self._generator.device.type, "state": self._generator.get_state()}
        elif self._pending_generator_state is not None:
            gen_state = dict(self._pending_generator_state)
        else:
            gen_state = None
        return {"format": _STATE_FORMAT, "optimizer": type(self).__name__,
                "base_optimizer": self.base_optimizer.state_dict(), "hyperparameters": dict(self.hyperparameters),
                "seed": self.seed, "generator": gen_state, "step_count": self.step_count,
                "extra": self._extra_state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or state_dict.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"not a {type(self).__name__} state dict (expected format {_STATE_FORMAT!r}, got "
                f"{state_dict.get('format') if isinstance(state_dict, dict) else type(state_dict).__name__!r})"
            )
        if state_dict.get("optimizer") != type(self).__name__:
            raise ValueError(
                f"state dict was saved by {state_dict.get('optimizer')!r}, cannot load it into {type(self).__name__}"
            )
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        self.hyperparameters.update(state_dict["hyperparameters"])
        self._link_base()  # load_state_dict rebuilt the base's group list: share it again
        self.seed = state_dict["seed"]
        self.step_count = state_dict["step_count"]
        gen = state_dict["generator"]
        self._generator = None
        self._pending_generator_state = None if gen is None else {
            "device_type": gen["device_type"],
            "state": gen["state"].detach().to("cpu", torch.uint8),
        }
        self._load_extra_state_dict(state_dict.get("extra", {}))

    def _extra_state_dict(self) -> dict[str, Any]:
        return {}

    def _load_extra_state_dict(self, extra: dict[str, Any]) -> None:
        pass

    @staticmethod
    def _grads(params: list[Tensor]) -> list[Tensor | None]:
        return [p.grad for p in params]

    @staticmethod
    @torch.no_grad()
    def _write_grads(params: list[Tensor], grads: list[Tensor | None]) -> None:
        for p, g in zip(params, grads):
            if g is None:
                p.grad = None
            elif p.grad is None:
                p.grad = g
            else:
                p.grad.copy_(g)

    def _loss_value(self, loss: Tensor | float, *, check: bool = True) -> float:
        """A loss whose value enters the update or the objective, averaged across ranks under
        ``torch.distributed``; non-finite raises (``check=False``: the caller applies ``nonfinite``).
        The check is on the average, so every rank raises together."""
        value = self.distributed.average_loss(loss)
        if check and not math.isfinite(value):
            self._raise_nonfinite(value)
        return value

    def _local_loss_value(self, loss: Tensor | float, *, check: bool = True) -> float:
        """A loss that is only logged: this rank's value, no communication. Not checked under
        ``torch.distributed`` (one rank raising alone would leave the others waiting in a collective);
        a NaN there reaches the next averaged loss of the step, which raises on every rank."""
        value = float(scalar_loss_value(loss))
        if check and not math.isfinite(value) and not self.distributed.is_active():
            self._raise_nonfinite(value)
        return value

    def _describe_evaluation(self) -> str:
        return f"evaluation {self._evaluation.label if self._evaluation else None!r}"

    def _raise_nonfinite(self, value: float) -> None:
        raise NonFiniteLossError(
            f"{type(self).__name__}: the loss at {self._describe_evaluation()} of step {self.step_count} "
            f"is {value}; no step was taken and the parameters keep their values from before this step "
            f"(nonfinite={self.nonfinite!r}). The run diverged or the batch is bad: lower the learning rate, "
            "check the data, or clip gradients"
        )

    def _program(self, params: list[Tensor],
                 origin: list[Tensor] | None) -> Generator[Request, Any, tuple[list[Tensor | None] | None, StepDiagnostics]]:
        """One step: move ``params`` (``origin``: the snapshot of theta, ``None`` when :attr:`moves_parameters`
        is False), ``yield`` a :class:`Request` per evaluation and receive its loss (the gradient is then in
        ``.grad``). Returns the combined gradient (``None``: keep the last evaluation's) and the diagnostics;
        the driver restores theta afterwards."""
        raise NotImplementedError

    def manual_step(self, apply: bool = True) -> Iterator[Evaluation]:
        """Run one step with the caller doing each forward/backward::

            for evaluation in optimizer.manual_step():
                loss = loss_fn(model(x), y)
                loss.backward()                 # or scaler.scale(loss).backward(), or several micro-batches
                evaluation.record(loss)

        The optimizer moves the parameters and clears the gradients before each body. After the
        loop the parameters are restored and the combined gradient is in ``.grad``; with
        ``apply=True`` the base optimizer then steps. With ``apply=False`` the caller steps it, e.g.
        ``scaler.step(optimizer.base_optimizer); scaler.update()`` for mixed precision.
        Leaving the loop early restores the parameters and skips the base step.
        """
        params = self._trainable()
        origin = snapshot(params) if self.moves_parameters else None
        program = self._program(params, origin)
        index = 0
        try:
            request = next(program)
            while True:
                self.zero_grad(set_to_none=True)
                evaluation = self._evaluation = Evaluation(index, request)
                # BatchNorm statistics move in the first evaluation only; m-sharpness under DDP: an
                # ascent-only evaluation skips the gradient all-reduce (both no-ops when not asked for)
                frozen = frozen_batchnorm_stats(self.model) if index > 0 else contextlib.nullcontext()
                with frozen, self.distributed.evaluation_context(self.model, request.ascent_only):
                    yield evaluation
                if evaluation.loss is None:
                    raise RuntimeError(
                        f"evaluation {index} ({request.label!r}) ended without evaluation.record(loss): the "
                        "optimizer needs the loss value at every point"
                    )
                self._check_some_gradient(params, evaluation)
                request = program.send(evaluation.loss)
                index += 1
        except StopIteration as done:
            grads, diagnostics = done.value
        finally:
            program.close()
            self._evaluation = None  # holds the last loss (and its graph): not kept past the step
            if origin is not None:
                restore(params, origin)  # bit-exact, also when a loss failed or the loop was left early
        if grads is not None:
            self._write_grads(params, grads)
        self.step_count += 1
        self.last_step = diagnostics
        if apply:
            self.base_step()

    def _check_some_gradient(self, params: list[Tensor], evaluation: Evaluation) -> None:
        """A closure that forgets ``loss.backward()`` would otherwise silently skip the update."""
        if all(p.grad is None for p in params):
            raise RuntimeError(
                f"{type(self).__name__}: evaluation {evaluation.index} ({evaluation.label!r}) left every parameter's "
                ".grad None; the closure (or the body of manual_step) must call loss.backward() before returning "
                "the loss"
            )

    @torch.no_grad()
    def base_step(self) -> None:
        """Let the base optimizer step with the combined gradient now in ``.grad``."""
        self.base_optimizer.step()

    def step(self, closure: Callable[..., Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One optimizer step. ``closure`` must clear nothing, compute the loss, call ``backward()`` and
        return the loss; it is called once per evaluation (:attr:`grad_evals_per_step` times for the
        full-batch optimizers). A closure that takes one argument receives the :class:`Evaluation` it
        serves (its ``label``, ``batch_fraction`` and ``batch()``), which sub-batch ascent needs::

            def closure(evaluation):
                x_used, y_used = evaluation.batch(x, y)
                loss = loss_fn(model(x_used), y_used)
                loss.backward()
                return loss

        Returns the objective estimate."""
        if closure is None or not callable(closure):
            raise ValueError(
                f"{type(self).__name__}.step needs a closure that computes the loss, calls backward() and "
                "returns the loss (it is evaluated at several perturbed points); for loops that run their own "
                f"forward/backward use {type(self).__name__}.manual_step() instead"
            )
        takes_evaluation = closure_takes_evaluation(closure)
        for evaluation in self.manual_step(apply=True):
            with torch.enable_grad():
                if takes_evaluation:
                    evaluation.record(closure(evaluation))
                else:
                    if evaluation.batch_fraction < 1 and not getattr(self, "_warned_full_batch", False):
                        self._warned_full_batch = True
                        warnings.warn(
                            f"the closure takes no argument, so evaluation {evaluation.label!r} used the whole batch "
                            f"instead of the fraction {evaluation.batch_fraction} (sub-batch ascent saves nothing); "
                            "define closure(evaluation) and slice with evaluation.batch(x, y)", stacklevel=3)
                    evaluation.record(closure())
        return torch.tensor(self.last_step.objective)
