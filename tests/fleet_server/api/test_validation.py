"""The JSON-schema subset used for request bodies, and pagination parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.fleet_server.api import validate
from tests.fleet_server.support import Env

SCHEMA = {
    "type": "object", "required": ["name"], "additionalProperties": False, "minProperties": 1,
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
        "n": {"type": "integer", "minimum": 1, "maximum": 3},
        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "enum": ["a", "b"]}},
        "note": {"type": "string", "nullable": True},
        "ratio": {"type": "number"},
    },
}


def test_valid() -> None:
    assert validate({"name": "abc", "n": 2, "tags": ["a"], "note": None, "ratio": 1}, SCHEMA) == []


@pytest.mark.parametrize(("value", "fragment"), [
    ({}, "$.name: required"),
    ({"name": "a"}, "shorter"),
    ({"name": "abcdef"}, "longer"),
    ({"name": "AB"}, "does not match"),
    ({"name": "ab", "n": 0}, "below"),
    ({"name": "ab", "n": 4}, "above"),
    ({"name": "ab", "n": True}, "expected integer"),
    ({"name": "ab", "tags": ["c"]}, "must be one of"),
    ({"name": "ab", "tags": ["a", "b", "a"]}, "more than"),
    ({"name": "ab", "x": 1}, "unknown property"),
    ({"name": "ab", "ratio": "1"}, "expected number"),
    ([], "expected object"),
])
def test_invalid(value: object, fragment: str) -> None:
    problems = validate(value, SCHEMA)
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "offset=-1"])
def test_bad_pagination_is_400(env: Env, query: str, tmp_path: Path) -> None:
    rv = env.client.get(f"/api/v1/users?{query}", headers=env.auth_admin())
    assert rv.status_code == 400 and rv.json["error"]["code"] == "invalid_parameter"


def test_pagination_envelope(env: Env) -> None:
    rv = env.client.get("/api/v1/users?limit=2&offset=1", headers=env.auth_admin())
    assert rv.status_code == 200
    body = rv.json
    assert set(body) == {"items", "total", "limit", "offset"}
    assert body["total"] == 4 and body["limit"] == 2 and body["offset"] == 1
    assert len(body["items"]) == 2
