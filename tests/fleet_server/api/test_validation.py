"""The JSON-schema subset used for request bodies, and pagination parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.fleet_server import strict_json
from edgefleet.fleet_server.api import validate
from edgefleet.fleet_server.strict_json import MAX_DEPTH
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


# -- review regressions ------------------------------------------------------------------


def test_pattern_must_match_the_whole_string() -> None:
    """S5: re.search with ^...$ accepted a trailing newline ("op1\\n")."""
    schema = {"type": "string", "pattern": "^[a-z0-9]+$"}
    assert validate("op1", schema) == []
    assert validate("op1\n", schema) != []


def test_username_with_trailing_newline_is_refused(env: Env) -> None:
    rv = env.client.post("/api/v1/users", headers=env.auth_admin(),
                         json={"username": "frank\n", "role": "viewer"})
    assert rv.status_code == 400 and rv.json["error"]["code"] == "validation_failed"


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def test_strict_json_limits_depth_and_refuses_non_finite_numbers() -> None:
    assert strict_json.loads(_nested(MAX_DEPTH)) is not None
    assert strict_json.loads(b'{"a": [1.5, -2, "x", null, true]}') == {
        "a": [1.5, -2, "x", None, True]}
    for text in (_nested(MAX_DEPTH + 1), _nested(100_000), '{"a": NaN}', "[Infinity]",
                 "[-Infinity]", '{"m": 1e999}', "-1e400"):
        with pytest.raises(ValueError):  # any ValueError (JSONDecodeError too)
            strict_json.loads(text)


def test_lone_surrogate_check_is_iterative() -> None:
    """C1: the recursive check raised RecursionError at ~450 levels (a 500)."""
    deep: object = "\ud800"
    for _ in range(5000):
        deep = {"k": [deep]}
    assert strict_json.has_lone_surrogates(deep)
    assert not strict_json.has_lone_surrogates({"k": ["fine", {"x": 1}]})
    assert strict_json.has_lone_surrogates({"\udfff": 1})


@pytest.mark.parametrize("depth", [70, 600, 100_000])
def test_deeply_nested_json_is_a_400_not_a_500(env: Env, depth: int) -> None:
    """C1: RecursionError escaped get_json(silent=True) (unauthenticated 500s)."""
    body = '{"username": ' + _nested(depth) + ', "password": "x"}'
    for path in ("/api/v1/auth/login", "/api/v1/enroll"):
        rv = env.client.post(path, data=body, content_type="application/json")
        assert rv.status_code == 400, (path, rv.json)
        assert rv.json["error"]["code"] == "malformed_json"
    rv = env.client.post("/api/v1/models/m/versions/1/approve", data=_nested(depth),
                         content_type="application/json", headers=env.auth_admin())
    assert rv.status_code == 400, rv.json


def test_nan_and_infinity_are_refused_in_bodies(env: Env) -> None:
    """C3: NaN/Infinity were accepted, stored, then served as invalid JSON."""
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        rv = env.client.post("/api/v1/enroll", content_type="application/json",
                             data='{"token": "x", "public_key": "y", "hardware": {"cpu": '
                                  + literal + "}}")
        assert rv.status_code == 400, (literal, rv.json)
        assert rv.json["error"]["code"] == "malformed_json"


def test_app_uses_the_strict_json_provider(env: Env) -> None:
    with pytest.raises(ValueError):
        env.app.json.loads('{"a": NaN}')


def test_exclusive_bounds_are_openapi_3_0_booleans() -> None:
    rate = {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True,
            "exclusiveMaximum": True}
    assert validate(0.5, rate) == []
    assert validate(0, rate) == ["$: not above 0"]
    assert validate(1, rate) == ["$: not below 1"]
    assert validate(0, {"type": "number", "minimum": 0}) == []
