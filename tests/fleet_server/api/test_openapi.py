"""/api/v1/openapi.json matches the implementation: every rule documented and vice versa."""

from __future__ import annotations

import re
from typing import Any

import schemathesis

from tests.fleet_server.support import Env

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


def _doc(env: Env) -> dict[str, Any]:
    rv = env.client.get("/api/v1/openapi.json")
    assert rv.status_code == 200 and rv.mimetype == "application/json"
    return rv.json


def _flask_operations(env: Env) -> set[tuple[str, str]]:
    ops = set()
    for rule in env.app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method.lower() in HTTP_METHODS:
                ops.add((method.lower(), path))
    return ops


def test_every_rule_is_documented_and_every_operation_exists(env: Env) -> None:
    doc = _doc(env)
    documented = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert documented == _flask_operations(env)
    assert len(documented) > 20


def test_no_rule_outside_the_api(env: Env) -> None:
    outside = [r.rule for r in env.app.url_map.iter_rules() if not r.rule.startswith("/api/v1")]
    assert outside == []


def test_operations_are_complete(env: Env) -> None:
    doc = _doc(env)
    assert doc["openapi"].startswith("3.")
    ids = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"], (method, path)
            assert op["operationId"] not in ids
            ids.add(op["operationId"])
            codes = set(op["responses"])
            assert any(c.startswith("2") for c in codes), (method, path)
            if op.get("security") == []:
                assert "x-required-role" not in op
            else:
                assert {"401", "403"} <= codes, (method, path)
                assert op["x-required-role"] in {"viewer", "operator", "admin"}
            if "{" in path:
                assert "404" in codes
                names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
                assert names == set(re.findall(r"\{(\w+)\}", path))
            if "requestBody" in op:
                assert {"400", "413"} <= codes


def test_public_operations_are_few_and_known(env: Env) -> None:
    doc = _doc(env)
    public = {(m.upper(), p) for p, item in doc["paths"].items()
              for m, op in item.items() if op.get("security") == []}
    assert public == {
        ("GET", "/api/v1/health"), ("GET", "/api/v1/openapi.json"),
        ("POST", "/api/v1/auth/login"), ("POST", "/api/v1/enroll"),
        # signed TUF metadata and bundles: their signatures, not the transport, protect them
        ("GET", "/api/v1/repo/image/metadata/{filename}"),
        ("GET", "/api/v1/repo/image/targets/{filename}"),
        ("GET", "/api/v1/repo/director/{device_id}/metadata/{filename}"),
        # device routes authenticate each request by the device's Ed25519 signature
        ("POST", "/api/v1/device/events"), ("GET", "/api/v1/device/assignment"),
        ("POST", "/api/v1/device/fl-node"),
    }


def test_schemathesis_accepts_the_document(env: Env) -> None:
    schema = schemathesis.openapi.from_dict(_doc(env))
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) == len(_flask_operations(env))
