"""The app's JSON provider (``app.json``): parses request bodies with :mod:`strict_json`.

Flask's ``request.get_json`` calls ``app.json.loads``; raising ``ValueError`` there makes
it answer 400 (or ``None`` with ``silent=True``), so too-deep nesting and NaN / Infinity
become client errors instead of a ``RecursionError`` 500 or stored invalid JSON.
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

from edgefleet.fleet_server import strict_json


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's default provider with :func:`strict_json.loads` for parsing."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """Parse ``s``; ValueError when it is not JSON, too deep or not finite."""
        if kwargs:
            raise TypeError(f"unsupported arguments: {sorted(kwargs)}")
        return strict_json.loads(s)
