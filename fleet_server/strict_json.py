"""Strict JSON for untrusted input: bounded nesting, finite numbers only. Pure.

``json.loads`` accepts ``NaN`` / ``Infinity`` (and turns ``1e999`` into ``inf``), which the
server would store and later serve as invalid JSON, and it raises ``RecursionError`` (not
``ValueError``) on deeply nested input. :func:`loads` turns both into ``ValueError`` and
refuses values nested deeper than :data:`MAX_DEPTH`. The checks here are iterative, so
they never hit the recursion limit themselves.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Deepest accepted nesting of arrays / objects (the top-level container is depth 1).
MAX_DEPTH = 64


class StrictJSONError(ValueError):
    """The text is JSON the server refuses (too deep, NaN / Infinity)."""


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not valid JSON")


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise StrictJSONError if ``value`` nests deeper than ``max_depth`` or holds a
    non-finite float."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise StrictJSONError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(item, dict | list):
            if depth + 1 > max_depth:
                raise StrictJSONError(f"nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` like ``json.loads``, refusing what :func:`check_value` refuses.

    Raises:
        ValueError: not JSON (``json.JSONDecodeError``), or StrictJSONError.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise StrictJSONError(f"nested deeper than {max_depth} levels") from None
    check_value(value, max_depth)
    return value


def has_lone_surrogates(value: Any) -> bool:
    """True when a JSON value holds a string (or key) with an unpaired UTF-16 surrogate.

    JSON allows ``"\\ud800"``, but such text cannot be encoded as UTF-8 for the database.
    """
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
