"""The drift API: role checks, parameters, pagination, errors, OpenAPI document."""

from __future__ import annotations

import re

import pytest
import schemathesis
from schemathesis.core.result import Ok

from tests.fleet_server.fleetdrift.support import MODEL, VERSION, DriftEnv

REPORT = f"/api/v1/drift?model={MODEL}&version={VERSION}"
PATHS = [REPORT, "/api/v1/drift/alerts", "/api/v1/drift/alerts/1",
         "/api/v1/drift/alerts/not-a-number"]


@pytest.mark.parametrize("path", PATHS)
def test_anonymous_is_refused(env: DriftEnv, path: str) -> None:
    assert env.get(path, 401, auth=False)["error"]["code"] == "unauthorized"
    bad = env.client.get(path, headers={"Authorization": "Bearer efa_not-a-token"})
    assert bad.status_code == 401


def test_viewer_reads(env: DriftEnv) -> None:
    device = env.enroll()
    env.store_window(device, env.summary(seed=3, shift=1.0))
    env.drift.evaluate()
    body = env.get(f"{REPORT}&scope=device&id={device}&since=0")
    assert body["status"] == "over" and body["open_alert"] is not None
    assert [c["name"] for c in body["columns"]] == ["f0", "f1", "score"]
    assert {c["kind"] for c in body["columns"]} == {"feature", "output"}
    f0 = body["columns"][0]
    assert f0["status"] == "over" and f0["n"] == 1000
    assert set(f0) >= {"psi", "js", "ks", "z_mean", "z_var", "status", "n"}

    alerts = env.get("/api/v1/drift/alerts?limit=1")
    assert alerts["total"] == 2 and len(alerts["items"]) == 1 and alerts["limit"] == 1
    second = env.get("/api/v1/drift/alerts?limit=1&offset=1")
    assert second["items"][0]["id"] != alerts["items"][0]["id"]
    fleet = env.get("/api/v1/drift/alerts?scope=fleet&status=open")
    assert fleet["total"] == 1 and fleet["items"][0]["scope_id"] == "fleet"
    assert env.get("/api/v1/drift/alerts?status=closed")["total"] == 0
    one = env.get(f"/api/v1/drift/alerts/{fleet['items'][0]['id']}")
    assert one["open_report"]["status"] == "over"


def test_time_parameters(env: DriftEnv) -> None:
    device = env.enroll()
    window = env.store_window(device, env.summary(seed=4))  # ends at 1_700_000_060
    base = f"{REPORT}&scope=device&id={device}"
    iso = env.get(f"{base}&since=2023-11-14T22:13:00&until=2023-11-14T22:15:00Z")
    assert iso["windows"] == 1 and iso["until"] > window["end"] >= iso["since"]
    default = env.get(base)  # the last 24 h: nothing
    assert default["windows"] == 0 and default["status"] == "insufficient"
    assert default["columns"] == []


@pytest.mark.parametrize(("query", "code"), [
    ("/api/v1/drift?version=1.0.0", "invalid_parameter"),
    (f"{REPORT}&scope=cohort", "invalid_parameter"),
    (f"{REPORT}&scope=device", "invalid_parameter"),
    (f"{REPORT}&since=yesterday", "invalid_parameter"),
    (f"{REPORT}&since=-5", "invalid_parameter"),
    (f"{REPORT}&since=nan", "invalid_parameter"),
    (f"{REPORT}&since=10&until=5", "invalid_query"),
    ("/api/v1/drift/alerts?status=maybe", "invalid_parameter"),
    ("/api/v1/drift/alerts?limit=0", "invalid_parameter"),
])
def test_bad_parameters(env: DriftEnv, query: str, code: str) -> None:
    assert env.get(query, 400)["error"]["code"] == code


def test_not_found(env: DriftEnv) -> None:
    missing = env.get(f"/api/v1/drift?model={MODEL}&version=0.0.0", 404)
    assert missing["error"]["code"] == "no_reference"
    env.get("/api/v1/drift/alerts/999", 404)
    env.get("/api/v1/drift/alerts/abc", 404)
    env.get("/api/v1/drift/alerts/99999999999999999999999", 404)


def test_openapi_documents_the_drift_routes(env: DriftEnv) -> None:
    doc = env.get("/api/v1/openapi.json", auth=False)
    paths = {p: item for p, item in doc["paths"].items() if p.startswith("/api/v1/drift")}
    assert set(paths) == {"/api/v1/drift", "/api/v1/drift/alerts",
                          "/api/v1/drift/alerts/{alert_id}"}
    for path, item in paths.items():
        op = item["get"]
        assert op["x-required-role"] == "viewer" and {"401", "403"} <= set(op["responses"])
        if "{" in path:
            assert "404" in op["responses"]
            assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == \
                set(re.findall(r"\{(\w+)\}", path))
    schema = schemathesis.openapi.from_dict(doc)
    results = list(schema.get_all_operations())
    assert results and all(isinstance(r, Ok) for r in results)
