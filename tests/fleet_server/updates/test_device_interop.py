"""The agent's own signer and event reporter against the server, over real HTTP.

The agent keeps its own copy of the signing code (it never imports the server); these
tests make sure both copies speak the same protocol.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from edgefleet.agent.update import signing
from edgefleet.agent.update.reporter import HttpReporter
from edgefleet.fleet_server.auth.roles import Role
from tests.fleet_server.updates.harness import serving
from tests.fleet_server.updates.test_device_env import API, Device, UpdatesEnv, updates_env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[UpdatesEnv]:
    with updates_env(tmp_path) as environment:
        environment.bundle("vision-1.1.tar")
        yield environment


@pytest.fixture
def device(env: UpdatesEnv) -> Device:
    return env.enroll()


def test_agent_signed_request_is_accepted(env: UpdatesEnv, device: Device) -> None:
    env.repo.assign(device.id, "vision-1.1.tar")
    with serving(env.app) as url:
        target = f"{url}{API}/device/assignment?ignored=1"
        rv = requests.get(target, timeout=10,
                          headers=signing.sign_request(device.key, device.id, "GET", target))
        assert rv.status_code == 200, rv.text
        assert rv.json() == {"target": "vision-1.1.tar"}
        body = json.dumps({"events": []}).encode()
        events_url = f"{url}{API}/device/events"
        forged = signing.sign_request(device.key, device.id, "POST", events_url, b"{}")
        rv = requests.post(events_url, data=body, timeout=10,
                           headers={"Content-Type": "application/json", **forged})
        assert rv.status_code == 401


def test_agent_reporter_delivers_machine_events(env: UpdatesEnv, device: Device,
                                                tmp_path: Path) -> None:
    with serving(env.app) as url:
        reporter = HttpReporter(f"{url}{API}", device.id, device.key, tmp_path / "queue.jsonl")
        reporter.report({"type": "update_state", "seq": 1, "event": "check", "from": "idle",
                         "to": "checking", "state": "checking", "error": None,
                         "bundle": None, "bundle_key": None})
        reporter.report({"type": "update_state", "seq": 2, "event": "assigned",
                         "from": "checking", "to": "downloading", "state": "downloading",
                         "error": None, "bundle": "vision-1.1.tar", "bundle_key": "k"})
        reporter.report({"type": "update_error", "state": "downloading",
                         "error": "disk full", "bundle": "vision-1.1.tar", "bundle_key": "k"})
        assert reporter.flush(timeout_s=10)
        assert reporter.delivered == 3
        assert reporter.dropped == 0
    view = env.client.get(f"{API}/devices/{device.id}/update", headers=env.auth(Role.VIEWER))
    assert view.status_code == 200
    body = view.json
    assert body is not None
    assert body["state"] == "downloading"
    assert body["status"]["errors_total"] == 1
    assert body["status"]["last_error"] == "disk full"
    assert [e["kind"] for e in body["events"]["items"]] == ["error", "state", "state"]
