"""Standard JSON for every file and database column the project writes.

Python's ``json`` writes ``NaN``/``Infinity`` by default, which no other JSON reader (SQLite's
``json_extract``, JavaScript, jq) accepts. :func:`dumps` turns every non-finite float into ``null``
(and tuples into lists, numpy/torch scalars into numbers) and then encodes with ``allow_nan=False``,
so a value that slipped through would raise instead of writing a non-standard file.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

__all__ = ["finite_or_none", "dumps"]


def finite_or_none(value: Any) -> Any:
    """A copy of ``value`` with non-finite floats replaced by ``None`` (JSON ``null``).

    Mappings keep their keys (turned into strings, as JSON requires), lists and tuples become
    lists; numpy and 0-d torch scalars become Python numbers. Other values are returned unchanged
    (``json`` then rejects what it cannot encode).
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, str) else k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars, 0-d arrays/tensors
        return finite_or_none(value.item())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_or_none` ``(value)`` with ``allow_nan=False`` (strict JSON)."""
    kwargs.setdefault("allow_nan", False)
    return json.dumps(finite_or_none(value), **kwargs)
