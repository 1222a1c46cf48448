"""Operator assignment of released bundles to devices (director repository), audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet_server.auth.roles import Role
from tests.fleet_server.updates.test_device_env import (
    API,
    Device,
    UpdatesEnv,
    body_of,
    updates_env,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[UpdatesEnv]:
    with updates_env(tmp_path) as environment:
        environment.bundle("vision-1.0.tar")
        environment.bundle("vision-1.1.tar", size=2048)
        yield environment


@pytest.fixture
def device(env: UpdatesEnv) -> Device:
    return env.enroll()


def _put(env: UpdatesEnv, device_id: str, body: Any, role: Role = Role.OPERATOR) -> Any:
    return env.client.put(f"{API}/devices/{device_id}/assignment", json=body,
                          headers=env.auth(role))


def test_assign_by_model_and_version(env: UpdatesEnv, device: Device) -> None:
    rv = _put(env, device.id, {"model": "vision", "version": "1.1"})
    assert rv.status_code == 200, rv.json
    listed = env.repo.targets()["vision-1.1.tar"]
    assert rv.json == {"device_id": device.id, "target": "vision-1.1.tar",
                       "length": 2048, "hashes": dict(listed.hashes)}
    assigned = env.repo.assignment(device.id)
    assert assigned is not None
    assert assigned.path == "vision-1.1.tar"
    assert assigned.hashes == listed.hashes
    # the device sees the hint; operators see the assignment
    assert env.device_get(device, "/device/assignment").json == {"target": "vision-1.1.tar"}
    view = env.client.get(f"{API}/devices/{device.id}/update", headers=env.auth(Role.VIEWER))
    assert body_of(view)["assignment"]["target"] == "vision-1.1.tar"


def test_assign_by_target_replaces_the_previous_assignment(env: UpdatesEnv,
                                                           device: Device) -> None:
    assert _put(env, device.id, {"target": "vision-1.1.tar"}).status_code == 200
    rv = _put(env, device.id, {"target": "vision-1.0.tar"})  # an operator's rollback
    assert rv.status_code == 200, rv.json
    assert rv.json["target"] == "vision-1.0.tar"
    assigned = env.repo.assignment(device.id)
    assert assigned is not None
    assert assigned.path == "vision-1.0.tar"
    other = env.enroll()
    assert env.repo.assignment(other.id) is None
    assert env.device_get(other, "/device/assignment").json == {"target": None}


def test_assignment_is_audited(env: UpdatesEnv, device: Device) -> None:
    _put(env, device.id, {"target": "vision-1.0.tar"})
    _put(env, device.id, {"model": "vision", "version": "1.1"})
    entries, total = env.services.audit.list(action="update.assign")
    assert total == 2
    latest = entries[0]
    assert latest["actor"]["kind"] == "token"
    assert latest["actor"]["role"] == "operator"
    assert (latest["target_type"], latest["target_id"]) == ("device", device.id)
    assert latest["before"] == {"target": "vision-1.0.tar"}
    assert latest["after"]["target"] == "vision-1.1.tar"
    assert latest["after"]["length"] == 2048
    assert entries[1]["before"] == {"target": None}


@pytest.mark.parametrize("body", [
    {"target": "vision-9.9.tar"}, {"model": "vision", "version": "2.0"},
    {"model": "audio", "version": "1.0"},
])
def test_unknown_target_is_404(env: UpdatesEnv, device: Device, body: Any) -> None:
    rv = _put(env, device.id, body)
    assert rv.status_code == 404, rv.json
    assert rv.json["error"]["code"] == "unknown_target"
    assert env.repo.assignment(device.id) is None
    assert env.services.audit.list(action="update.assign")[1] == 0


@pytest.mark.parametrize("body", [
    {}, {"model": "vision"}, {"version": "1.0"},
    {"target": "vision-1.0.tar", "model": "vision", "version": "1.0"},
    {"target": "../vision-1.0.tar"}, {"target": ".hidden"}, {"model": "a/b", "version": "1"},
    {"target": "vision-1.0.tar", "extra": True}, {"target": 5}, [],
])
def test_malformed_assignment_is_400(env: UpdatesEnv, device: Device, body: Any) -> None:
    rv = _put(env, device.id, body)
    assert rv.status_code == 400, rv.json
    assert env.repo.assignment(device.id) is None


def test_unknown_device_is_404(env: UpdatesEnv) -> None:
    rv = _put(env, "dev-0000000000000000", {"target": "vision-1.0.tar"})
    assert rv.status_code == 404
    assert rv.json["error"]["code"] == "not_found"


def test_decommissioned_device_is_409(env: UpdatesEnv, device: Device) -> None:
    env.decommission(device)
    rv = _put(env, device.id, {"target": "vision-1.0.tar"})
    assert rv.status_code == 409
    assert env.repo.assignment(device.id) is None


def test_viewer_cannot_assign(env: UpdatesEnv, device: Device) -> None:
    rv = _put(env, device.id, {"target": "vision-1.0.tar"}, role=Role.VIEWER)
    assert rv.status_code == 403
    assert env.client.put(f"{API}/devices/{device.id}/assignment",
                          json={"target": "vision-1.0.tar"}).status_code == 401
    assert env.repo.assignment(device.id) is None
    assert _put(env, device.id, {"target": "vision-1.0.tar"}, role=Role.ADMIN).status_code == 200


def test_openapi_documents_the_update_routes(env: UpdatesEnv) -> None:
    doc = body_of(env.client.get(f"{API}/openapi.json"))
    events = doc["paths"]["/api/v1/device/events"]["post"]
    assert events["security"] == []
    assert "401" in events["responses"]
    assert {p["name"] for p in events["parameters"]} >= {
        "X-Edgefleet-Device", "X-Edgefleet-Timestamp", "X-Edgefleet-Nonce",
        "X-Edgefleet-Signature"}
    assert "events" in events["requestBody"]["content"]["application/json"]["schema"][
        "properties"]
    assign = doc["paths"]["/api/v1/devices/{device_id}/assignment"]["put"]
    assert assign["x-required-role"] == "operator"
    assert doc["paths"]["/api/v1/devices/{device_id}/update"]["get"]["x-required-role"] \
        == "viewer"
    assert "/api/v1/device/assignment" in doc["paths"]
