"""Standard JSON for every file and database column the project writes.

Python's ``json`` writes ``NaN``/``Infinity`` by default, which no other JSON reader (SQLite's
``json_extract``, JavaScript, jq) accepts. :func:`dumps` turns every non-finite float into ``null``
(and tuples into lists, numpy/torch scalars into numbers) and then encodes with ``allow_nan=False``,
so a value that slipped through would raise instead of writing a non-standard file.

Configs must round-trip (``optimizer.settings.tilt = inf`` is a valid TSAM setting), so they are
written with ``nonfinite="string"``: ``inf``, ``-inf`` and ``nan`` become the strings ``"inf"``,
``"-inf"``, ``"nan"``, which the config reader turns back into floats (see
:func:`tiltedsam.harness.config.from_dict`).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

__all__ = ["finite_or_none", "dumps", "NONFINITE_STRINGS"]

#: the strings that stand for non-finite floats in configs written with ``nonfinite="string"``
NONFINITE_STRINGS = {"inf": float("inf"), "+inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}


def finite_or_none(value: Any, nonfinite: str = "null") -> Any:
    """A copy of ``value`` with non-finite floats replaced by ``None`` (JSON ``null``).

    Mappings keep their keys (turned into strings, as JSON requires), lists and tuples become
    lists; numpy and 0-d torch scalars become Python numbers. Other values are returned unchanged
    (``json`` then rejects what it cannot encode).
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return None if nonfinite == "null" else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, str) else k: finite_or_none(v, nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v, nonfinite) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars, 0-d arrays/tensors
        return finite_or_none(value.item(), nonfinite)
    return value


def dumps(value: Any, nonfinite: str = "null", **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_or_none` ``(value)`` with ``allow_nan=False`` (strict JSON).

    ``nonfinite``: ``"null"`` (results, metrics) or ``"string"`` (configs: ``"inf"``, ``"-inf"``, ``"nan"``).
    """
    if nonfinite not in ("null", "string"):
        raise ValueError(f"nonfinite must be 'null' or 'string', got {nonfinite!r}")
    kwargs.setdefault("allow_nan", False)
    return json.dumps(finite_or_none(value, nonfinite), **kwargs)
