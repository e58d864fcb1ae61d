"""The paper's experiments as named sweep presets: ``tiltedsam sweep paper:NAME``.

Each preset is a TOML file shipped inside the package (``harness/paper_presets/NAME.toml``) with two
tables:

``[preset]``
    ``title`` and ``source`` (the table/figure of the paper it reproduces), ``choices`` (the decisions
    taken where the paper is ambiguous, each with its evidence), ``paper`` (the paper's numbers, for the
    report's comparison), ``best`` (dotted sweep keys -> values: the per-data-set best settings App. C.1
    reports, applied by ``--scale best``), ``smoke`` (dotted sweep keys -> values applied by ``--scale
    smoke``), ``cost`` (``seconds_per_grad_eval`` on one GPU and its source; ``train_examples`` of the
    data set, or a table of them per GLUE task) and optionally ``extends`` (another preset whose tables
    this one starts from: ``[sweep]`` keys replace the parent's, ``base`` is merged key by key).

``[sweep]``
    a :class:`tiltedsam.harness.sweep.SweepConfig` (the grid of App. C.1, 3 seeds, the recipe of Sec. 5).

Scales (:data:`SCALES`): ``paper`` (the full tuning grid), ``best`` (the paper's reported best ρ, t and
s; lr still tuned), ``smoke`` (one value per axis, one seed, two steps on a few examples: runs on a CPU
in seconds, on synthetic data in the real on-disk format).

Cost estimate (:func:`estimate`). A run's gradient evaluations are its steps times the optimizer's
evaluations per step (:func:`tiltedsam.optim.registry.grad_evals_per_step`), with the steps derived from
the data set's training size, the batch size and the budget exactly as :func:`~.train.resolve_budget`
does. GPU-hours = gradient evaluations x ``seconds_per_grad_eval``, the time of one forward-backward of a
64-example batch; for CIFAR-100 and DTD it is Table 7's ERM minutes divided by ERM's evaluations (ERM
makes one per step, so the paper's step-cost ratios, e.g. TSAM s=5 at 333/32 = 10.4 x ERM against 10
evaluations, carry over); for the other rows it is an estimate whose source the preset states.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .config import ConfigError, RunConfig, apply_overrides, from_dict

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["Preset", "SCALES", "PRESET_PREFIX", "list_presets", "load_preset", "preset_sweep", "estimate",
           "dry_run_text", "is_preset_reference"]

PRESET_PREFIX = "paper:"
SCALES = ("paper", "best", "smoke")
_PACKAGE = "tiltedsam.harness"
_FOLDER = "paper_presets"


@dataclass
class Preset:
    """One experiment of the paper: metadata and the sweep mapping (before scaling)."""

    name: str
    title: str
    source: str
    sweep: dict[str, Any]
    choices: list[str] = field(default_factory=list)
    paper: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)


def is_preset_reference(text: str) -> bool:
    return text.startswith(PRESET_PREFIX)


def _preset_files() -> dict[str, Any]:
    folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    return {entry.name[:-5]: entry for entry in folder.iterdir() if entry.name.endswith(".toml")}


def list_presets() -> list[Preset]:
    """Every shipped preset, sorted by name."""
    return [load_preset(name) for name in sorted(_preset_files())]


def _read(name: str) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"unknown preset {PRESET_PREFIX}{name}; allowed: "
                          f"{', '.join(PRESET_PREFIX + n for n in sorted(files))} (tiltedsam sweep --list-presets)")
    return tomllib.loads(files[name].read_text(encoding="utf-8"))


def _merge(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``parent``: nested tables merged key by key, everything else replaced."""
    out = json.loads(json.dumps(parent))
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_preset(name: str) -> Preset:
    """The preset ``name`` (with or without the ``paper:`` prefix), its ``extends`` chain resolved."""
    name = name.removeprefix(PRESET_PREFIX)
    data = _read(name)
    seen = {name}
    while "extends" in data.get("preset", {}):
        parent_name = data["preset"].pop("extends")
        if parent_name in seen:
            raise ConfigError(f"preset {name}: 'extends' forms a cycle through {parent_name}")
        seen.add(parent_name)
        parent = _read(parent_name)
        child_sweep = data.get("sweep", {})
        sweep = dict(parent.get("sweep", {}))
        for key, value in child_sweep.items():  # base merged, variants merged per label; grids, optimizers replaced
            if key == "base":
                sweep[key] = _merge(sweep.get(key, {}), value)
            elif key == "variants":
                sweep[key] = {**sweep.get(key, {}), **value}
            else:
                sweep[key] = value
        meta = {**parent.get("preset", {}), **{k: v for k, v in data["preset"].items()}}
        for key in ("smoke", "cost"):  # merged key by key: a child states only what differs
            meta[key] = {**parent.get("preset", {}).get(key, {}), **data["preset"].get(key, {})}
        data = {"preset": meta, "sweep": sweep}
    meta = data.get("preset", {})
    sweep = dict(data.get("sweep", {}))
    sweep.setdefault("name", name)
    sweep.setdefault("out_dir", f"results/paper/{name}")
    return Preset(name=name, title=meta.get("title", name), source=meta.get("source", ""), sweep=sweep,
                  choices=list(meta.get("choices", [])), paper=dict(meta.get("paper", {})),
                  best=dict(meta.get("best", {})), smoke=dict(meta.get("smoke", {})), cost=dict(meta.get("cost", {})))


def preset_sweep(name: str, scale: str = "paper", overrides: list[str] = ()) -> Any:
    """The :class:`~.sweep.SweepConfig` of preset ``name`` at ``scale``, with ``--set`` overrides applied
    last. ``smoke`` keeps the first value of every axis and the first seed, then applies the preset's
    ``smoke`` table (two steps on a few examples, small models)."""
    from .sweep import SweepConfig

    if scale not in SCALES:
        raise ConfigError(f"--scale {scale!r} is invalid; allowed: {', '.join(SCALES)}")
    preset = load_preset(name)
    data = json.loads(json.dumps(preset.sweep))
    if scale in ("best", "smoke"):
        data = apply_overrides(data, preset.best)
    if scale == "smoke":
        data["seeds"] = data.get("seeds", [0])[:1]
        for table in [data.get("grid", {}), *data.get("per_optimizer", {}).values()]:
            for axis, values in table.items():
                table[axis] = values[:1]
        data = apply_overrides(data, preset.smoke)
        data["out_dir"] = f"results/paper-smoke/{preset.name}"
    data = apply_overrides(data, list(overrides))
    # --set optimizers=[...] may narrow the preset: axes of the optimizers left out go with them
    labels = set(data.get("optimizers", []))
    data["per_optimizer"] = {k: v for k, v in data.get("per_optimizer", {}).items() if k in labels}
    return from_dict(SweepConfig, data)


# ---------------------------------------------------------------------- cost
def _train_examples(preset: Preset, config: RunConfig) -> int:
    examples = preset.cost.get("train_examples", 50_000)
    if isinstance(examples, dict):  # GLUE: per task
        examples = examples[config.data.options.get("task", "")]
    if config.data.limit is not None:
        examples = min(examples, config.data.limit)
    return max(1, round(examples * (1 - config.data.val_fraction)))


def estimate(preset: Preset, sweep: Any) -> dict[str, Any]:
    """Runs, gradient evaluations and GPU-hours of ``sweep`` (a scaled preset), per label and in total.

    Steps per epoch = ceil(training examples / batch size); the budget is resolved as the trainer
    resolves it (ESAM1, PGN, RSAM and ESAM2 at TSAM's budget take proportionally more steps).
    """
    from .sweep import expand_grid
    from .train import resolve_budget

    seconds = float(preset.cost.get("seconds_per_grad_eval", float("nan")))
    per_label: dict[str, dict[str, Any]] = {}
    for point in expand_grid(sweep, check=False):
        steps_per_epoch = math.ceil(_train_examples(preset, point.config) / point.config.batch_size)
        budget = resolve_budget(point.config, steps_per_epoch)
        row = per_label.setdefault(point.label, {"runs": 0, "grad_evals": 0.0, "steps": 0, "evals": set()})
        row["evals"].add(budget.grad_evals_per_step)
        row["runs"] += 1
        row["steps"] += budget.total_steps
        row["grad_evals"] += float(budget.total_grad_evals)
    for row in per_label.values():
        low, high = min(row["evals"]), max(row["evals"])
        row["evals_per_step"] = f"{low:g}" if low == high else f"{low:g}-{high:g}"
        del row["evals"]
        row["gpu_hours"] = row["grad_evals"] * seconds / 3600
    total = {"runs": sum(r["runs"] for r in per_label.values()),
             "grad_evals": sum(r["grad_evals"] for r in per_label.values())}
    total["gpu_hours"] = total["grad_evals"] * seconds / 3600
    return {"per_label": per_label, "total": total, "seconds_per_grad_eval": seconds,
            "cost_source": preset.cost.get("source", "")}


def _axes_text(sweep: Any) -> list[str]:
    lines = [f"  all optimizers: {k} = {v}" for k, v in sweep.grid.items()]
    for label, axes in sweep.per_optimizer.items():
        lines += [f"  {label}: {k} = {v}" for k, v in axes.items()]
    return lines or ["  (no axes)"]


def dry_run_text(name: str, scale: str = "paper", overrides: list[str] = ()) -> str:
    """What ``tiltedsam sweep paper:NAME --dry-run`` prints: the grid, runs, gradient evaluations and
    GPU-hours per optimizer label and in total, with the sources of the cost figures."""
    preset = load_preset(name)
    sweep = preset_sweep(name, scale, overrides)
    cost = estimate(preset, sweep)
    lines = [f"preset paper:{preset.name} ({scale} scale): {preset.title}", f"source: {preset.source}",
             f"seeds: {sweep.seeds}; output: {sweep.out_dir}", "grid:", *_axes_text(sweep), "",
             f"{'label':<16}{'runs':>6}{'evals/step':>12}{'steps':>14}{'grad evals':>16}{'GPU-hours':>12}"]
    for label, row in cost["per_label"].items():
        lines.append(f"{label:<16}{row['runs']:>6}{row['evals_per_step']:>12}{row['steps']:>14,}"
                     f"{row['grad_evals']:>16,.0f}{row['gpu_hours']:>12.2f}")
    total = cost["total"]
    lines += [f"{'total':<16}{total['runs']:>6}{'':>12}{'':>14}{total['grad_evals']:>16,.0f}{total['gpu_hours']:>12.2f}",
              "",
              f"runs: {total['runs']}  gradient evaluations: {total['grad_evals']:,.0f} (batches of "
              f"{sweep.base.get('batch_size', 64)})  GPU-hours: {total['gpu_hours']:.1f}",
              f"cost model: {cost['seconds_per_grad_eval']:g} s per gradient evaluation on one GPU "
              f"({cost['cost_source']})"]
    if preset.paper:
        lines.append("the paper's test numbers: " + ", ".join(f"{k} {v:g}" for k, v in preset.paper.items()))
    if preset.choices:
        lines += ["choices where the paper is ambiguous:", *(f"  - {c}" for c in preset.choices)]
    return "\n".join(lines)


def list_text() -> str:
    """One line per preset: name, the paper's table/figure, title."""
    presets = list_presets()
    width = max(len(p.name) for p in presets) + len(PRESET_PREFIX) + 2
    return "\n".join(f"{PRESET_PREFIX + p.name:<{width}}{p.source:<40}{p.title}" for p in presets)

