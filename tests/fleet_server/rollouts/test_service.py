"""Rollouts through the real app: creation, waves, gates on reported installs, operator
actions, roll back to the previous assignment, conflicts, and resuming after a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.devices.groups import GroupService
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from edgefleet.fleet_server.registry.stages import Stage
from edgefleet.fleet_server.rollouts.service import EXTRAS_KEY, RolloutService, rollout_service
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.updates import keys_dir, repo_dir
from edgefleet.fleet_server.updates.events import update_events
from edgefleet.fleet_server.updates.keys import init_keys
from edgefleet.fleet_server.updates.repository import Repository
from tests.fleet_server.registry.conftest import make_onnx
from tests.fleet_server.updates.test_device_env import UpdatesEnv, event

API = "/api/v1"
MODEL = "vision"
# Only the install and devices-lost gates: these tests report installs, not telemetry.
INSTALL_ONLY = {"max_latency_p95_ratio": None, "max_output_psi": None, "max_output_js": None,
                "max_input_psi": None, "max_accuracy_drop": None,
                "min_shadow_agreement": None, "max_lost_rate": None}


@dataclass
class Fleet(UpdatesEnv):
    devices: tuple[str, ...] = ()

    def post(self, path: str, body: Any, role: Role = Role.OPERATOR) -> Any:
        return self.client.post(API + path, json=body, headers=self.auth(role))

    def get(self, path: str, role: Role = Role.VIEWER) -> Any:
        return self.client.get(API + path, headers=self.auth(role))

    def report(self, device_id: str, target: str, *, ok: bool = True) -> None:
        """What the device's updater reports after installing (or failing) ``target``."""
        if ok:
            events = [event("checking", frm="idle", to="checking"),
                      event("downloading", frm="checking", to="downloading", bundle=target),
                      event("committed", frm="switching", to="committed", bundle=target)]
        else:
            events = [event("warming", frm="staging", to="warming", bundle=target),
                      event("warming", kind="error", bundle=target, error="smoke test failed"),
                      event("rolling_back", frm="warming", to="rolling_back", bundle=target),
                      event("idle", frm="rolling_back", to="idle", bundle=target)]
        update_events(self.services).record(device_id, events)

    def tick(self) -> dict[str, Any]:
        rollout_service(self.services).tick()
        items = self.get("/rollouts").json["items"]
        return dict(self.get(f"/rollouts/{items[0]['id']}").json)


def _release(fleet: Fleet, version: str, stage: Stage | None, tmp: Path) -> None:
    registry = registry_service(fleet.services)
    with make_onnx(tmp / f"{version}.onnx", seed=len(version)).open("rb") as f:
        registry.upload(MODEL, version, f, UploadMetadata(), SYSTEM)
    if stage is not None:
        registry.transition(MODEL, version, stage, SYSTEM)
    fleet.bundle(f"{MODEL}-{version}.tar")


@contextmanager
def fleet_env(base: Path, n_devices: int) -> Iterator[Fleet]:
    data_dir = base / "data"
    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, session_cookie_secure=False))
    services: Services = app.extensions["edgefleet"]
    repo = Repository(repo_dir(services), init_keys(keys_dir(services), base / "offline"))
    repo.initialise()
    fleet = Fleet(app, services, repo, base)
    for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
        _, secret = services.tokens.create(SYSTEM, name=f"{role.value}-token", role=role,
                                           user_id=None, owner_role=None)
        fleet.tokens[role] = secret
    _release(fleet, "1.0", Stage.STAGING, base)
    _release(fleet, "1.1", Stage.STAGING, base)
    GroupService(services.store, services.audit).create_group("cams", SYSTEM)
    devices = []
    for _ in range(n_devices):
        device = fleet.enroll()
        services.store.db.execute("UPDATE devices SET group_name = 'cams' WHERE id = ?",
                                  [device.id])
        repo.assign(device.id, f"{MODEL}-1.0.tar")
        devices.append(device.id)
    fleet.devices = tuple(devices)
    try:
        yield fleet
    finally:
        service = services.extras.get(EXTRAS_KEY)
        if isinstance(service, RolloutService):
            service.close()  # its background signer uses the store
        services.store.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_env(tmp_path, 20) as env:
        yield env


def _create(fleet: Fleet, **overrides: Any) -> Any:
    body = {"model": MODEL, "version": "1.1", "from_version": "1.0",
            "target": {"group": "cams"}, "bake_s": 0, "max_extension_s": 0,
            "gates": INSTALL_ONLY} | overrides
    return fleet.post("/rollouts", body)


def _assigned(fleet: Fleet, target: str) -> set[str]:
    return {d for d in fleet.devices
            if (a := fleet.repo.assignment(d)) is not None and a.path == target}


def test_create_assigns_only_the_canary_wave(fleet: Fleet) -> None:
    rv = _create(fleet)
    assert rv.status_code == 201, rv.json
    rollout = rv.json
    assert rollout["status"] == "running"
    assert [w["cumulative"] for w in rollout["waves"]] == [1, 2, 10, 20]
    assert [w["state"] for w in rollout["waves"]] == ["current", "pending", "pending",
                                                      "pending"]
    canary = _assigned(fleet, "vision-1.1.tar")
    assert len(canary) == 1
    devices = fleet.get(f"/rollouts/{rollout['id']}/devices?wave=0").json["items"]
    assert [d["device_id"] for d in devices] == sorted(canary)
    assert devices[0]["previous_target"] == "vision-1.0.tar"
    entries, total = fleet.services.audit.list(action="rollout.create")
    assert total == 1
    assert entries[0]["after"]["devices"] == 20


def test_good_release_goes_through_every_wave(fleet: Fleet) -> None:
    rollout_id = _create(fleet).json["id"]
    for expected_installed in (1, 2, 10, 20):
        for device_id in _assigned(fleet, "vision-1.1.tar"):
            fleet.report(device_id, "vision-1.1.tar")
        view = fleet.tick()
        assert view["device_states"].get("installed") == expected_installed
    assert view["status"] == "completed"
    assert _assigned(fleet, "vision-1.1.tar") == set(fleet.devices)
    actions = [d["action"] for d in
               fleet.get(f"/rollouts/{rollout_id}/decisions").json["items"]]
    assert actions == ["create", "advance", "advance", "advance", "complete"]
    gates = {g["name"]: g for g in view["gates"]}
    assert gates["install_failure_rate"]["status"] == "pass"
    assert gates["output_psi"]["status"] == "skipped"


def test_waiting_for_reports_never_advances(fleet: Fleet) -> None:
    rollout_id = _create(fleet, max_extension_s=3600).json["id"]
    view = fleet.tick()  # nobody reported: not enough data, wait
    assert view["wave"] == 0
    assert view["last_action"] == "extend"
    assert len(_assigned(fleet, "vision-1.1.tar")) == 1
    fleet.tick()
    log = fleet.get(f"/rollouts/{rollout_id}/decisions").json["items"]
    assert [d["action"] for d in log] == ["create", "extend"]  # logged once per wave


def test_failed_install_pauses_under_the_pause_policy(fleet: Fleet) -> None:
    rollout_id = _create(fleet).json["id"]
    (canary,) = _assigned(fleet, "vision-1.1.tar")
    fleet.report(canary, "vision-1.1.tar", ok=False)
    view = fleet.tick()
    assert view["status"] == "paused"
    assert view["device_states"] == {"failed": 1, "pending": 19} or \
        view["device_states"] == {"rolled_back": 1, "pending": 19}
    gates = {g["name"]: g for g in view["gates"]}
    assert gates["install_failure_rate"]["status"] == "fail"
    assert len(_assigned(fleet, "vision-1.1.tar")) == 1  # nothing more went out
    entries, _ = fleet.services.audit.list(action="rollout.pause")
    assert entries[0]["actor"]["kind"] == "system"
    assert entries[0]["after"]["gates"]
    # resume starts the bake clock over, not the evidence: the failure still decides
    assert fleet.post(f"/rollouts/{rollout_id}/resume", {}).status_code == 200
    view = fleet.tick()
    assert view["status"] == "paused"
    assert {g["name"]: g for g in view["gates"]}["install_failure_rate"]["status"] == "fail"


def test_failed_install_rolls_back_under_the_rollback_policy(fleet: Fleet) -> None:
    rv = _create(fleet, on_failure="rollback", waves=[0.1, 1.0])
    rollout_id = rv.json["id"]
    first = _assigned(fleet, "vision-1.1.tar")
    assert len(first) == 2
    bad, good = sorted(first)
    fleet.report(good, "vision-1.1.tar")
    fleet.report(bad, "vision-1.1.tar", ok=False)
    view = fleet.tick()
    assert view["status"] == "rolled_back"
    assert _assigned(fleet, "vision-1.1.tar") == set()
    assert _assigned(fleet, "vision-1.0.tar") == set(fleet.devices)
    states = fleet.get(f"/rollouts/{rollout_id}/devices?state=rolled_back").json
    assert states["total"] == 2
    entries, _ = fleet.services.audit.list(action="rollout.rollback")
    assert entries[0]["after"]["gates"][0]["name"] == "install_failure_rate"


def test_operator_actions_and_their_preconditions(fleet: Fleet) -> None:
    rollout_id = _create(fleet, bake_s=3600).json["id"]
    assert fleet.tick()["last_action"] is None  # baking: nothing decided yet
    assert fleet.post(f"/rollouts/{rollout_id}/resume", {}).status_code == 409
    assert fleet.post(f"/rollouts/{rollout_id}/pause", {"reason": "lunch"}).json[
        "status"] == "paused"
    assert fleet.post(f"/rollouts/{rollout_id}/promote", {}).status_code == 409
    assert fleet.post(f"/rollouts/{rollout_id}/resume", {}).json["status"] == "running"
    for device_id in _assigned(fleet, "vision-1.1.tar"):
        fleet.report(device_id, "vision-1.1.tar")
    promoted = fleet.post(f"/rollouts/{rollout_id}/promote", {"reason": "looks fine"}).json
    assert promoted["wave"] == 1  # gates evaluated at once, the next wave went out
    assert len(_assigned(fleet, "vision-1.1.tar")) == 2
    assert fleet.post(f"/rollouts/{rollout_id}/abort", {}).json["status"] == "aborted"
    assert fleet.post(f"/rollouts/{rollout_id}/abort", {}).status_code == 409
    rolled = fleet.post(f"/rollouts/{rollout_id}/rollback", {}).json
    assert rolled["status"] == "rolled_back"
    assert _assigned(fleet, "vision-1.0.tar") == set(fleet.devices)
    log = fleet.get(f"/rollouts/{rollout_id}/decisions").json["items"]
    assert [d["action"] for d in log] == ["create", "pause", "resume", "promote", "advance",
                                          "abort", "rollback"]
    assert log[1]["reason"] == "lunch"


def test_one_active_rollout_per_device(fleet: Fleet) -> None:
    first = _create(fleet).json["id"]
    rv = _create(fleet, target={"devices": list(fleet.devices[:3])})
    assert rv.status_code == 409
    assert "already in an active rollout" in rv.json["error"]["message"]
    fleet.post(f"/rollouts/{first}/abort", {})
    assert _create(fleet, target={"devices": list(fleet.devices[:3])}).status_code == 201


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"version": "9.9"}, 404, "no registered version"),
    ({"target": {"group": "nobody"}}, 404, "no active device"),
    ({"target": {"devices": ["ghost"]}}, 404, "unknown or decommissioned"),
    ({"target": {"group": "cams", "devices": ["x"]}}, 400, "not both"),
    ({"target": {}}, 400, "give a group"),
    ({"waves": [0.5, 0.2, 1.0]}, 400, "strictly increasing"),
    ({"waves": [0.5]}, 400, "last wave must be 1.0"),
    ({"on_failure": "explode"}, 400, "request body is invalid"),
    ({"gates": {"max_output_psi": -1}}, 400, "request body is invalid"),
    ({"surprise": 1}, 400, "request body is invalid"),
])
def test_bad_requests_get_clear_errors(fleet: Fleet, body: dict[str, Any], status: int,
                                       fragment: str) -> None:
    rv = _create(fleet, **body)
    assert rv.status_code == status, rv.json
    assert fragment in rv.json["error"]["message"]


def test_draft_and_unpublished_versions_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    registry = registry_service(fleet.services)
    with make_onnx(tmp_path / "draft.onnx").open("rb") as f:
        registry.upload(MODEL, "2.0", f, UploadMetadata(), SYSTEM)
    rv = _create(fleet, version="2.0")
    assert rv.status_code == 404
    assert "stage draft" in rv.json["error"]["message"]
    registry.transition(MODEL, "2.0", Stage.STAGING, SYSTEM)
    rv = _create(fleet, version="2.0")
    assert rv.status_code == 409
    assert "publish the release first" in rv.json["error"]["message"]


def test_roles_are_enforced(fleet: Fleet) -> None:
    body = {"model": MODEL, "version": "1.1", "target": {"group": "cams"}}
    assert fleet.post("/rollouts", body, role=Role.VIEWER).status_code == 403
    assert fleet.client.post(f"{API}/rollouts", json=body).status_code == 401
    rollout_id = _create(fleet).json["id"]
    assert fleet.post(f"/rollouts/{rollout_id}/pause", {}, role=Role.VIEWER).status_code == 403
    assert fleet.get(f"/rollouts/{rollout_id}").status_code == 200
    assert fleet.get("/rollouts/999").status_code == 404
    assert fleet.get("/rollouts/abc").status_code == 404


def test_a_restarted_server_finishes_an_interrupted_wave(fleet: Fleet) -> None:
    """Killed after the wave was committed but before every device was signed: the next
    server's first tick signs the rest; no wave is repeated or lost."""
    rollout_id = _create(fleet, waves=[0.25, 1.0], max_extension_s=3600).json["id"]
    store = fleet.services.store
    for device_id in _assigned(fleet, "vision-1.1.tar"):
        fleet.report(device_id, "vision-1.1.tar")
    # simulate the crash: the ADVANCE transaction committed, signing never happened
    with store.transaction() as db:
        db.execute("UPDATE rollouts SET wave = 1, wave_started_at = ?1, bake_started_at = ?1"
                   " WHERE id = ?2",
                   [time.time(), rollout_id])
        db.execute("UPDATE rollout_devices SET wave = 1, assign = 'assigning',"
                   " previous_target = 'vision-1.0.tar' WHERE rollout_id = ? AND wave IS NULL",
                   [rollout_id])
    assert len(_assigned(fleet, "vision-1.1.tar")) == 5
    fleet.services.extras.pop(EXTRAS_KEY)  # a new process: a new service, same database
    view = fleet.tick()
    assert view["wave"] == 1
    assert _assigned(fleet, "vision-1.1.tar") == set(fleet.devices)
    rows = store.db.execute("SELECT assign, COUNT(*) FROM rollout_devices GROUP BY assign"
                            ).fetchall()
    assert dict(rows) == {"assigned": 20}
    log = fleet.get(f"/rollouts/{rollout_id}/decisions").json["items"]
    # the simulated advance logged nothing; wave 1 now waits for its devices' reports
    assert [d["action"] for d in log] == ["create", "extend"]
    spec = json.loads(store.db.execute("SELECT spec FROM rollouts").fetchone()[0])
    assert spec["fractions"] == [0.25, 1.0]


def _shadow_of(fleet: Fleet, device_id: str) -> Any:
    assigned = fleet.repo.assignment(device_id)
    assert assigned is not None
    return assigned.custom.get("edgefleet", {}).get("shadow")


def test_shadow_mode_runs_the_candidate_beside_the_old_model_until_the_wave_comes(
        fleet: Fleet) -> None:
    rollout_id = _create(fleet, shadow={"sample_rate": 0.25}, waves=[0.5, 1.0],
                         max_extension_s=3600).json["id"]
    waves = {d["device_id"]: d["wave"] for d in
             fleet.get(f"/rollouts/{rollout_id}/devices?limit=100").json["items"]}
    for device_id, wave in waves.items():
        assigned = fleet.repo.assignment(device_id)
        assert assigned is not None
        if wave == 0:  # the new version, no shadow
            assert (assigned.path, _shadow_of(fleet, device_id)) == ("vision-1.1.tar", None)
        else:  # still the old version, the candidate in shadow
            assert assigned.path == "vision-1.0.tar"
            # canonical JSON (what TUF signs) has no floats: the rate is a decimal string
            assert _shadow_of(fleet, device_id) == {"target": "vision-1.1.tar",
                                                    "sample_rate": "0.25"}
    fleet.post(f"/rollouts/{rollout_id}/abort", {})
    assert {_shadow_of(fleet, d) for d in fleet.devices} == {None}
    assert _assigned(fleet, "vision-1.0.tar") == {d for d, w in waves.items() if w is None}


def test_a_shadow_rollout_completes_once_no_device_is_left_to_shadow(fleet: Fleet) -> None:
    gates = {**INSTALL_ONLY, "min_shadow_agreement": 0.9}
    _create(fleet, shadow={"sample_rate": 0.5}, waves=[0.5, 1.0], gates=gates,
            max_extension_s=3600)
    for device_id in _assigned(fleet, "vision-1.1.tar"):
        fleet.report(device_id, "vision-1.1.tar")
    view = fleet.post(f"/rollouts/{fleet.tick()['id']}/promote", {}).json  # no shadow data:
    assert view["wave"] == 1  # a promote lets "not enough data" pass
    for device_id in _assigned(fleet, "vision-1.1.tar"):
        fleet.report(device_id, "vision-1.1.tar")
    view = fleet.tick()
    assert view["status"] == "completed", view["gates"]
    assert {g["name"]: g for g in view["gates"]}["shadow_agreement"]["status"] == "skipped"


def test_a_finished_rollout_is_never_rolled_back_behind_a_newer_ones_back(
        fleet: Fleet) -> None:
    first = _create(fleet, waves=[1.0]).json["id"]
    for device_id in fleet.devices:
        fleet.report(device_id, "vision-1.1.tar")
    assert fleet.tick()["status"] == "completed"
    rv = fleet.post(f"/rollouts/{first}/rollback", {})
    assert rv.status_code == 409
    assert "only a running, paused or aborted" in rv.json["error"]["message"]


def test_a_roll_back_leaves_devices_that_moved_on_alone(fleet: Fleet) -> None:
    rollout_id = _create(fleet, waves=[0.1, 1.0], max_extension_s=3600).json["id"]
    first = sorted(_assigned(fleet, "vision-1.1.tar"))
    fleet.post(f"/rollouts/{rollout_id}/abort", {})
    moved = first[0]
    assert fleet.client.put(f"{API}/devices/{moved}/assignment",
                            json={"target": "vision-1.0.tar"},
                            headers=fleet.auth(Role.OPERATOR)).status_code == 200
    fleet.repo.assign(moved, "vision-1.0.tar")
    view = fleet.post(f"/rollouts/{rollout_id}/rollback", {}).json
    assert view["device_states"]["not_reverted"] == 1
    assert view["device_states"]["rolled_back"] == len(first) - 1


def test_an_unpublished_from_version_is_refused(fleet: Fleet) -> None:
    rv = _create(fleet, from_version="0.9")
    assert rv.status_code == 409
    assert "could not return devices" in rv.json["error"]["message"]


def test_devices_in_a_rollout_are_not_assigned_by_hand(fleet: Fleet) -> None:
    _create(fleet, max_extension_s=3600)
    rv = fleet.client.put(f"{API}/devices/{fleet.devices[0]}/assignment",
                          json={"target": "vision-1.0.tar"}, headers=fleet.auth(Role.OPERATOR))
    assert rv.status_code == 409
    assert rv.json["error"]["code"] == "device_busy"


def test_non_ascii_digits_are_not_ids(fleet: Fleet) -> None:
    rollout_id = _create(fleet).json["id"]
    assert fleet.get("/rollouts/\u00b2").status_code == 404
    assert fleet.get("/rollouts/\u0661").status_code == 404
    assert fleet.get(f"/rollouts/{rollout_id}/devices?wave=\u00b2").status_code == 400
