"""``?limit=&offset=`` parsing and the ``{"items", "total", "limit", "offset"}`` envelope."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flask import request

from edgefleet.fleet_server.api.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

PAGINATION_PARAMS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                "default": DEFAULT_LIMIT}},
    {"name": "offset", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": 2**62, "default": 0}},
]


@dataclass(frozen=True)
class Page:
    """The requested window of a list."""

    limit: int
    offset: int


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer") from e
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value


def page_request() -> Page:
    """The page asked for by the current request. Raises ApiError 400 on bad values."""
    return Page(limit=_int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
                offset=_int_arg("offset", 0, 0, 2**62))


def paginate(items: Sequence[Any], total: int, page: Page) -> dict[str, Any]:
    """The list envelope every list endpoint returns."""
    return {"items": list(items), "total": total, "limit": page.limit, "offset": page.offset}


def query_filter(name: str, choices: Sequence[str] | None = None) -> str | None:
    """A string filter from the query string (None when absent).

    Raises:
        ApiError: 400 when ``choices`` is given and the value is not one of them.
    """
    value = request.args.get(name)
    if value is not None and choices is not None and value not in choices:
        raise ApiError(400, "invalid_parameter", f"{name} must be one of {list(choices)}")
    return value


def list_response_schema(item_schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI schema of a paginated list of ``item_schema``."""
    return {"type": "object", "required": ["items", "total", "limit", "offset"],
            "properties": {"items": {"type": "array", "items": item_schema},
                           "total": {"type": "integer"}, "limit": {"type": "integer"},
                           "offset": {"type": "integer"}}}
