"""Update events reported by devices: validation, storage, state, and what operators see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.updates.events import UpdateEvents
from tests.fleet_server.updates.test_device_env import (
    API,
    Device,
    UpdatesEnv,
    body_of,
    event,
    updates_env,
)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[UpdatesEnv]:
    with updates_env(tmp_path) as environment:
        yield environment


@pytest.fixture
def device(env: UpdatesEnv) -> Device:
    return env.enroll()


def _update(env: UpdatesEnv, device_id: str, query: str = "") -> dict[str, Any]:
    rv = env.client.get(f"{API}/devices/{device_id}/update{query}", headers=env.auth(Role.VIEWER))
    assert rv.status_code == 200, rv.json
    result: dict[str, Any] = body_of(rv)
    return result


def test_events_are_stored_and_reflected_in_the_device_update(env: UpdatesEnv,
                                                              device: Device) -> None:
    before = _update(env, device.id)
    assert before["state"] is None
    assert before["status"] is None
    assert before["events"] == {"items": [], "total": 0, "limit": 50, "offset": 0}

    batch = [event("IDLE", frm="IDLE", to="CHECKING"),
             event("CHECKING", frm="CHECKING", to="DOWNLOADING", bundle="m-1.tar"),
             event("DOWNLOADING", frm="DOWNLOADING", to="VERIFYING", bundle="m-1.tar")]
    rv = env.post_events(device, batch)
    assert rv.status_code == 202, rv.json
    assert rv.json == {"accepted": 3}

    view = _update(env, device.id)
    assert view["state"] == "VERIFYING"
    assert view["status"]["bundle"] == "m-1.tar"
    assert view["status"]["events_total"] == 3
    assert view["status"]["errors_total"] == 0
    items = view["events"]["items"]
    assert [e["to"] for e in items] == ["VERIFYING", "DOWNLOADING", "CHECKING"]  # newest first
    assert items[0] == {**{k: v for k, v in items[0].items()
                           if k in ("id", "received_at")},
                        "ts": batch[2]["ts"], "kind": "state", "state": "DOWNLOADING",
                        "from": "DOWNLOADING", "to": "VERIFYING", "bundle": "m-1.tar",
                        "error": None}

    rv = env.post_events(device, [
        event("WARMING", kind="error", error="smoke test failed: output is NaN",
              bundle="m-1.tar"),
        event("WARMING", frm="WARMING", to="ROLLING_BACK")])
    assert rv.status_code == 202
    view = _update(env, device.id, "?limit=2&offset=1")
    assert view["state"] == "ROLLING_BACK"
    assert view["status"]["events_total"] == 5
    assert view["status"]["errors_total"] == 1
    assert view["status"]["last_error"] == "smoke test failed: output is NaN"
    assert view["events"]["total"] == 5
    assert [e["kind"] for e in view["events"]["items"]] == ["error", "state"]


def test_state_without_a_transition_is_the_events_state(env: UpdatesEnv,
                                                         device: Device) -> None:
    assert env.post_events(device, [{"ts": 5, "kind": "state", "state": "IDLE"}]).status_code \
        == 202
    assert _update(env, device.id)["state"] == "IDLE"


def test_events_are_per_device(env: UpdatesEnv, device: Device) -> None:
    other = env.enroll()
    env.post_events(device, [event("IDLE", frm="IDLE", to="CHECKING")])
    assert _update(env, other.id)["events"]["total"] == 0
    assert _update(env, other.id)["state"] is None


def test_events_are_not_audited_one_by_one(env: UpdatesEnv, device: Device) -> None:
    _, before = env.services.audit.list()
    env.post_events(device, [event("IDLE", frm="IDLE", to="CHECKING")] * 10)
    _, after = env.services.audit.list()
    assert after == before


@pytest.mark.parametrize("events", [
    [event("IDLE")] * 101,
    [{**event("IDLE"), "extra": 1}],
    [{**event("IDLE"), "kind": "progress"}],
    [{**event("IDLE"), "ts": "yesterday"}],
    [{**event("IDLE"), "ts": -1}],
    [{**event("IDLE"), "state": ""}],
    [{**event("IDLE"), "state": "x" * 65}],
    [{**event("IDLE"), "to": "bad state"}],
    [{**event("IDLE"), "error": "e" * 4097}],
    [{"kind": "state", "state": "IDLE"}],
    ["IDLE"],
])
def test_invalid_events_are_refused(env: UpdatesEnv, device: Device,
                                    events: list[Any]) -> None:
    rv = env.post_events(device, events)
    assert rv.status_code == 400, rv.json
    assert body_of(rv)["error"]["code"] == "validation_failed"
    assert _update(env, device.id)["events"]["total"] == 0


def test_update_view_needs_a_known_device_and_a_viewer(env: UpdatesEnv) -> None:
    rv = env.client.get(f"{API}/devices/dev-0000000000000000/update",
                        headers=env.auth(Role.VIEWER))
    assert rv.status_code == 404
    assert env.client.get(f"{API}/devices/dev-0000000000000000/update").status_code == 401


def test_old_events_are_dropped_beyond_the_per_device_cap(env: UpdatesEnv,
                                                          device: Device) -> None:
    events = UpdateEvents(env.services.store, keep_per_device=3)
    for i in range(5):
        events.record(device.id, [{"ts": float(i), "kind": "state", "state": f"S{i}"}])
    items, total = events.list_events(device.id)
    assert total == 3
    assert [e["state"] for e in items] == ["S4", "S3", "S2"]
    status = events.status(device.id)
    assert status is not None
    assert status["events_total"] == 5
