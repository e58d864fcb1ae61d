"""Typed run configuration: dataclasses read from TOML/YAML/JSON, checked field by field.

A :class:`RunConfig` fully determines a training run (data, model, optimizer, budget, seed). Its
``[run]`` section (:class:`ExecutionConfig`: output directory, threads, progress bar) says *how* to
execute it and is not part of the run's identity (:func:`run_key`).

Loading rejects unknown keys and wrongly typed values with a message that names the dotted key,
the value and what is allowed; ``--set key=value`` overrides use the same checks. Defaults are the
paper's recipe (Sec. 5, App. C.1): batch 64, SGD with momentum 0.9, weight decay 5e-4, label
smoothing 0.1, a constant learning rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib  # type: ignore[no-redef]

from .. import _json
from .._atomic import atomic_write as atomic_write_text

__all__ = [
    "ConfigError", "DataConfig", "ModelConfig", "OptimizerConfig", "BudgetConfig", "ExecutionConfig",
    "RunConfig", "BUDGET_KINDS", "from_dict", "to_dict", "load_config", "save_config", "apply_overrides",
    "parse_override", "run_key", "identity_dict", "to_toml", "atomic_write_text", "check_name",
    "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "MAX_CONFIG_NODES", "MAX_SEED",
]

BUDGET_KINDS = ("epochs", "steps", "grad_evals")

#: a config file larger than this is refused before it is parsed
MAX_CONFIG_BYTES = 1 << 20
#: deepest nesting of tables/lists a config may have (JSON/TOML/YAML and --set values)
MAX_CONFIG_DEPTH = 32
#: most values a config may hold once YAML aliases are expanded (an alias bomb is refused before any copy)
MAX_CONFIG_NODES = 100_000
#: seeds seed numpy's generator too, which takes 32-bit seeds
MAX_SEED = 2**32 - 1
#: integers beyond int64 cannot reach torch
_INT_LIMIT = 2**63
#: labels and names that become file names: letters, digits, ``_ . + -``; no separators, no ``..``
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}$")


def check_name(key: str, value: str, allow_empty: bool = False) -> str:
    """``value`` if it is safe as (part of) a file name, else :class:`ConfigError` naming ``key``."""
    if allow_empty and value == "":
        return value
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or ".." in value:
        raise ConfigError(f"{key} = {value!r} is not a safe name; allowed: 1 to 100 letters, digits and _ . + = - "
                          "(starting with a letter or digit; no path separators, no '..')")
    return value


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


@dataclass
class DataConfig:
    """Which data set and how it is split/corrupted (see :func:`tiltedsam.harness.data.load_dataset`)."""

    name: str = "mnist5k"
    label_noise: float = 0.0  # fraction of training (and, unless clean_validation, validation) labels flipped
    val_fraction: float = 0.1
    test_fraction: float | None = None  # None: the data set's own default
    clean_validation: bool = False  # True: the validation split keeps its true labels
    data_dir: str | None = None
    augment: bool = False
    limit: int | None = None  # use only this many examples (tests, quick runs)
    split_seed: int = 0  # the train/val/test split (fixed across run seeds by default)
    noise_seed: int | None = None  # the label noise; None: the run's seed
    options: dict[str, Any] = field(default_factory=dict)  # data-set extras (seq_len, image_size, ...)


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    options: dict[str, Any] = field(default_factory=dict)  # passed to build_model as keyword arguments


@dataclass
class OptimizerConfig:
    """A registered optimizer (``tiltedsam optimizers`` lists them) on a base optimizer."""

    name: str = "sgd"
    base: str = "sgd"
    lr: float = 0.01  # constant: the paper uses no schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    settings: dict[str, Any] = field(default_factory=dict)  # the optimizer's own: tilt, num_samples, rho, ...
    tilt_schedule: str = "constant"  # TSAM only: constant | increase (0 -> t) | decrease (t -> 0), Fig. 4
    # every evaluation of one step sees the same dropout masks (RNG replayed per step; harness/dropout.py)
    same_dropout_masks: bool = True


@dataclass
class BudgetConfig:
    """How long to train: ``amount`` epochs, steps or gradient evaluations.

    With ``match_optimizer`` set, the budget is that *other* optimizer's (with ``match_settings``),
    converted to gradient evaluations; this run then takes as many steps as fit in them. ESAM1 (SAM
    with TSAM's compute) is ``optimizer.name = "sam"``, ``budget.match_optimizer = "tsam"``.
    """

    kind: str = "epochs"
    amount: int = 10
    match_optimizer: str | None = None
    match_settings: dict[str, Any] = field(default_factory=dict)


#: how a multi-process run splits the model (run.parallel): replicas (DDP) or shards (FSDP2)
PARALLEL_MODES = ("ddp", "fsdp")


@dataclass
class ExecutionConfig:
    """How to execute a run; not part of its identity."""

    out_dir: str = "runs/run"
    num_threads: int = 0  # torch threads; 0: the shared policy of tiltedsam._threads (idle cores / processes)
    progress: bool = True  # tqdm progress bar
    device: str = "cpu"
    eval_batch_size: int = 1000
    #: with --nproc N or torchrun: "ddp" (every rank holds the whole model) or "fsdp" (FSDP2: each rank one shard)
    parallel: str = "ddp"


@dataclass
class RunConfig:
    seed: int = 0
    label: str = ""  # name shown in reports; "" means the optimizer's name
    batch_size: int = 64
    label_smoothing: float = 0.1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    run: ExecutionConfig = field(default_factory=ExecutionConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def display_label(self) -> str:
        return self.label or self.optimizer.name


def validate(config: RunConfig) -> None:
    """Value checks beyond types (ranges, names)."""
    def bad(key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"{key} = {value!r} is invalid; allowed: {allowed}")

    if config.batch_size < 1:
        raise bad("batch_size", config.batch_size, "an integer >= 1")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise bad("label_smoothing", config.label_smoothing, "0 <= label_smoothing < 1")
    for key, seed in (("seed", config.seed), ("data.split_seed", config.data.split_seed),
                      ("data.noise_seed", config.data.noise_seed)):
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise bad(key, seed, f"an integer from 0 to 2**32 - 1 = {MAX_SEED}")
    # a display name (sweeps use safe names, checked by check_name, for their run directories)
    if len(config.label) > 200 or any(not ch.isprintable() for ch in config.label):
        raise bad("label", config.label, "at most 200 printable characters (no newlines or control characters)")
    for section in (config, config.data, config.model, config.optimizer, config.budget, config.run):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                prefix = "" if section is config else {DataConfig: "data.", ModelConfig: "model.",
                                                       OptimizerConfig: "optimizer.", BudgetConfig: "budget.",
                                                       ExecutionConfig: "run."}[type(section)]
                raise bad(prefix + f.name, value, "a finite number")
    if config.optimizer.momentum < 0:
        raise bad("optimizer.momentum", config.optimizer.momentum, "a finite number >= 0")
    if config.optimizer.weight_decay < 0:
        raise bad("optimizer.weight_decay", config.optimizer.weight_decay, "a finite number >= 0")
    if not 0.0 <= config.data.label_noise <= 1.0:
        raise bad("data.label_noise", config.data.label_noise, "a fraction in [0, 1]")
    if config.budget.kind not in BUDGET_KINDS:
        raise bad("budget.kind", config.budget.kind, " | ".join(BUDGET_KINDS))
    if config.budget.amount < 1:
        raise bad("budget.amount", config.budget.amount, "an integer >= 1")
    if not (config.optimizer.lr > 0 and math.isfinite(config.optimizer.lr)):
        raise bad("optimizer.lr", config.optimizer.lr, "a finite number > 0")
    if config.optimizer.tilt_schedule not in ("constant", "increase", "decrease"):
        raise bad("optimizer.tilt_schedule", config.optimizer.tilt_schedule, "constant | increase | decrease")
    if config.run.num_threads > 0:
        from .._limits import check_threads

        try:
            check_threads("run.num_threads", config.run.num_threads)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.run.num_threads < 0:
        raise bad("run.num_threads", config.run.num_threads, "0 (torch default) or a positive count")
    if config.run.eval_batch_size < 1:
        raise bad("run.eval_batch_size", config.run.eval_batch_size, "an integer >= 1")
    if config.run.parallel not in PARALLEL_MODES:
        raise bad("run.parallel", config.run.parallel, " | ".join(PARALLEL_MODES))


# ---------------------------------------------------------------------- typed conversion
def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "none"
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "dict": "table"}.get(
            tp.__name__, tp.__name__)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        return "table"
    if origin is list:
        return "list"
    return str(tp)


def _is_json_value(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


def _nonfinite_from_strings(value: Any) -> Any:
    """``"inf"``, ``"-inf"``, ``"nan"`` -> floats inside free-form tables (``optimizer.settings`` and
    the like): JSON has no infinity, so configs are written with these strings (see ``_json``)."""
    from .._json import NONFINITE_STRINGS

    if isinstance(value, str):
        return NONFINITE_STRINGS.get(value.lower(), value)
    if isinstance(value, dict):
        return {k: _nonfinite_from_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nonfinite_from_strings(v) for v in value]
    return value


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table of settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r} ({type(value).__name__})")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping) or not _is_json_value(dict(value)):
            raise ConfigError(f"{key} must be a table of plain values (strings, numbers, booleans, lists), "
                              f"got {value!r}")
        return _nonfinite_from_strings(json.loads(json.dumps(dict(value))))  # deep copy, tuples -> lists
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not -_INT_LIMIT < value < _INT_LIMIT:
                raise ConfigError(f"{key} = {value!r} is out of range; allowed: an integer of magnitude below 2**63")
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types (named by dotted key)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"allowed keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}")
    kwargs = {name: _convert(data[name], hints[name], prefix + name) for name in names if name in data}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - dataclass construction problems
        raise ConfigError(f"{prefix or 'config'}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def identity_dict(config: RunConfig) -> dict[str, Any]:
    """The part of the config that determines the result (everything except ``run``)."""
    data = to_dict(config)
    data.pop("run")
    return data


def run_key(config: RunConfig) -> str:
    """A stable 16-hex-digit hash of the run's identity (canonical JSON of :func:`identity_dict`)."""
    canonical = json.dumps(identity_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=0.03"`` -> ``("optimizer.lr", 0.03)``. The value is read as a TOML value
    (numbers, booleans, quoted strings, lists, inline tables); anything else is a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"--set expects KEY=VALUE with a non-empty key, got {text!r}")
    if raw.lower() in ("none", "null"):
        return key, None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--set {key}=...: the value is longer than {MAX_CONFIG_BYTES} bytes")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"--set {key}=...: the value is nested too deeply (at most {MAX_CONFIG_DEPTH} levels)") \
            from None
    check_structure(value, f"--set {key}")
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key}: {'.'.join(parts[:i + 1])} is not a table")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | list[str]) -> dict[str, Any]:
    """A deep copy of the raw config mapping with dotted-key overrides applied (before type checks)."""
    try:
        result = json.loads(json.dumps(data))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"the config holds a value that is not plain data (strings, numbers, booleans, lists, "
                          f"tables): {' '.join(str(exc).split())}") from None
    items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else list(overrides.items())
    for key, value in items:
        _set_dotted(result, key, value)
    return result


# ---------------------------------------------------------------------- files
def check_structure(data: Any, where: str) -> None:
    """Refuse values nested deeper than :data:`MAX_CONFIG_DEPTH` or with more than
    :data:`MAX_CONFIG_NODES` values (iteratively: no recursion, no copy)."""
    stack = [(data, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_CONFIG_NODES:
            raise ConfigError(f"{where} holds more than {MAX_CONFIG_NODES} values; configs are small tables")
        if isinstance(value, (dict, list, tuple)):
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{where} is nested too deeply (more than {MAX_CONFIG_DEPTH} levels)")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def _yaml_load(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses alias expansion beyond :data:`MAX_CONFIG_NODES` values (a
    "billion laughs" bomb) and recursive aliases, measured on the composed node graph before any
    Python object is built or copied."""
    try:
        import yaml
    except ModuleNotFoundError as exc:  # pragma: no cover
        raise ConfigError("YAML configs need PyYAML (pip install pyyaml); or use TOML") from exc

    class _CheckedLoader(yaml.SafeLoader):
        def compose_document(self) -> Any:  # type: ignore[override]
            node = super().compose_document()
            _check_yaml_graph(node, where)
            return node

    try:
        return yaml.load(text, Loader=_CheckedLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} cannot be parsed: {' '.join(str(exc).split())}") from None


def _check_yaml_graph(root: Any, where: str) -> None:
    """Expanded size (every alias counted as a full copy of its target) and depth of a YAML node
    graph, computed once per node; a node reachable from itself is a recursive alias."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, depth)
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if not children_done:
            if id(node) in on_path:
                raise ConfigError(f"{where} has a recursive YAML alias; configs must be finite tables")
            on_path.add(id(node))
            stack.append((node, True))
            for child in children:
                if id(child) in on_path:
                    raise ConfigError(f"{where} has a recursive YAML alias; configs must be finite tables")
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        on_path.discard(id(node))
        size = 1 + sum(sizes[id(c)][0] for c in children)
        depth = 1 + max((sizes[id(c)][1] for c in children), default=0)
        if size > MAX_CONFIG_NODES:
            raise ConfigError(f"{where} expands to more than {MAX_CONFIG_NODES} values (YAML aliases); "
                              "refusing it (an alias bomb?)")
        if depth > 2 * MAX_CONFIG_DEPTH:  # keys and values both count as nodes
            raise ConfigError(f"{where} is nested too deeply (more than {MAX_CONFIG_DEPTH} levels)")
        sizes[id(node)] = (size, depth)


def read_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML, YAML or JSON file into a dict (format from the extension).

    Refused with a one-line :class:`ConfigError`: files over :data:`MAX_CONFIG_BYTES`, text that is
    not UTF-8, unparsable text, nesting deeper than :data:`MAX_CONFIG_DEPTH`, more than
    :data:`MAX_CONFIG_NODES` values (YAML aliases expanded, checked before anything is built).
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, a device (/dev/zero), a FIFO that would block
        raise ConfigError(f"config file {str(path)!r} is not a regular file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    where = f"config file {str(path)!r}"
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"{where}: unknown format {suffix!r}; use .toml, .yaml/.yml or .json")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is {size} bytes; configs are at most {MAX_CONFIG_BYTES} bytes")
    try:
        with open(path, "rb") as stream:
            text = stream.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text (byte {exc.start}); is it a config file?") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml_load(text, where)
            data = {} if data is None else data
        else:
            data = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where} cannot be parsed: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply (more than {MAX_CONFIG_DEPTH} levels)") from None
    check_structure(data, where)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a table of settings, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | Mapping[str, Any] = ()) -> RunConfig:
    """Read a config file (or start from the defaults), apply overrides, check everything."""
    data = read_mapping(path) if path is not None else {}
    return from_dict(RunConfig, apply_overrides(data, overrides or {}))


def toml_string(value: str, key: str = "value") -> str:
    """``value`` as a TOML basic string: ``\\``, ``"`` and control characters escaped, every other
    character (any language, emoji) kept as it is. (``json.dumps`` would write characters outside the
    Basic Multilingual Plane as surrogate pairs, ``"\\ud83d\\ude00"``, which TOML refuses.) A string
    holding a lone surrogate (a file name in another encoding than UTF-8) has no TOML spelling:
    :class:`ConfigError` naming ``key``."""
    out = []
    for char in value:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise ConfigError(f"{key} = {value!r} is not valid Unicode (a name in another encoding than UTF-8?); "
                              "use a UTF-8 name")
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{toml_string(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def to_toml(data: Mapping[str, Any]) -> str:
    """Write a nested mapping as TOML: scalars first, then one ``[section]`` per nested dataclass table.

    ``None`` has no TOML spelling, so ``None`` values are left out (every ``None``-able field
    defaults to ``None``, so reading the file back gives the same config).
    """
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict) and key in {"data", "model", "optimizer", "budget", "run", "base", "grid",
                                                "variants"}:
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{toml_string(key) if '.' in key else key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_config(config: RunConfig, directory: str | os.PathLike[str]) -> None:
    """Write the resolved config as ``config.toml`` and ``config.json`` into ``directory``."""
    data = to_dict(config)
    atomic_write_text(Path(directory) / "config.toml", to_toml(data))
    atomic_write_text(Path(directory) / "config.json", _json.dumps(data, nonfinite="string", indent=2) + "\n")
