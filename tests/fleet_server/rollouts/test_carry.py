"""Carrying out waves in batches outside the rollouts lock: operator actions answer while
a wave is being signed and are respected by it (roll back, abort, pause), and a crash
between signing and recording resumes without losing or repeating anything.

The fault injector is a gate in front of the real repository's ``assign_many``: it holds
the signing of a batch until the test lets it go (what a slow disk does), or fails right
after signing (what a kill between signing and recording does).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.rollouts.service import (
    EXTRAS_KEY,
    PUBLISH_KEY,
    RolloutService,
    rollout_service,
)
from edgefleet.fleet_server.updates.repository import Assignment, Repository
from edgefleet.fleet_server.updates.signed_repo import current_versions
from tests.fleet_server.rollouts.test_service import INSTALL_ONLY, MODEL, Fleet, fleet_env

OLD, NEW = f"{MODEL}-1.0.tar", f"{MODEL}-1.1.tar"
WAIT_S = 60.0  # a generous bound for "this never happens": not a timing assertion


class GatedRepository:
    """The real repository; ``assign_many`` can be held at a gate or fail after signing."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.hold = False
        self.fail_after_signing = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.repo, name)

    def assign_many(self, assignments: list[Assignment]) -> Any:
        self.batches.append([a.device_id for a in assignments])
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(WAIT_S), "the test never released the gate"
        signed = self.repo.assign_many(assignments)
        if self.fail_after_signing:
            self.fail_after_signing = False
            raise RuntimeError("killed between signing and recording")
        return signed


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_env(tmp_path, 30) as env:
        yield env


def _service(fleet: Fleet) -> tuple[RolloutService, GatedRepository]:
    """A rollout service that signs 5 devices per batch and at most 2 in the caller."""
    services = fleet.services
    gated = GatedRepository(fleet.repo)
    service = RolloutService(services.store, services.audit, repository=lambda: gated,
                             registry=lambda: registry_service(services),
                             publish=lambda: services.extras.get(PUBLISH_KEY),
                             batch_size=5, inline_max=2)
    services.extras[EXTRAS_KEY] = service
    return service, gated


def _create(fleet: Fleet, **overrides: Any) -> int:
    body = {"model": MODEL, "version": "1.1", "from_version": "1.0",
            "target": {"group": "cams"}, "bake_s": 0, "max_extension_s": 3600,
            "waves": [0.5, 1.0], "gates": INSTALL_ONLY} | overrides
    rv = fleet.post("/rollouts", body)
    assert rv.status_code == 201, rv.json
    return int(rv.json["id"])


def _operator(fleet: Fleet, path: str) -> dict[str, Any]:
    """POST an operator action from another thread; it must answer while the gate holds
    the signing (were it waiting for the signing, it would never answer)."""
    answer: dict[str, Any] = {}

    def call() -> None:
        rv = fleet.post(path, {})
        answer.update(status=rv.status_code, body=rv.json)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive(), f"{path} waited for the signing of the wave"
    assert answer["status"] == 200, answer
    return dict(answer["body"])


def _held_first_batch(fleet: Fleet
                      ) -> tuple[RolloutService, GatedRepository, int, set[str]]:
    """A new rollout whose first batch is held at the gate while it is being signed:
    the service, the gate, the rollout id and the devices of that batch."""
    service, gated = _service(fleet)
    gated.hold = True
    rollout_id = _create(fleet)
    assert gated.entered.wait(WAIT_S)
    return service, gated, rollout_id, set(gated.batches[0])


def _rows(fleet: Fleet, rollout_id: int) -> dict[str, str]:
    return dict(fleet.services.store.db.execute(
        "SELECT device_id, assign FROM rollout_devices WHERE rollout_id = ?",
        [rollout_id]).fetchall())


def _on(fleet: Fleet, target: str) -> set[str]:
    return {d for d, t in fleet.repo.assigned_targets(fleet.devices).items() if t == target}


def _wave(fleet: Fleet, rollout_id: int, wave: int) -> set[str]:
    return {r[0] for r in fleet.services.store.db.execute(
        "SELECT device_id FROM rollout_devices WHERE rollout_id = ? AND wave = ?",
        [rollout_id, wave]).fetchall()}


def test_a_large_wave_is_signed_in_batches_in_the_background(fleet: Fleet) -> None:
    service, gated = _service(fleet)
    rollout_id = _create(fleet)
    assert service.wait_for_carry_out(WAIT_S)
    wave = _wave(fleet, rollout_id, 0)
    assert len(wave) == 15
    assert _on(fleet, NEW) == wave
    assert [len(b) for b in gated.batches] == [5, 5, 5]
    assert set(_rows(fleet, rollout_id).values()) == {"assigned", "pending"}
    view = fleet.get(f"/rollouts/{rollout_id}").json
    assert view["carry_out"]["signed"] == 15
    assert view["carry_out"]["pending"] == 0


def test_a_roll_back_during_signing_answers_at_once_and_reverts_every_device(
        fleet: Fleet) -> None:
    service, gated, rollout_id, in_flight = _held_first_batch(fleet)
    view = _operator(fleet, f"/rollouts/{rollout_id}/rollback")
    assert view["status"] == "rolled_back"
    gated.release.set()
    assert service.wait_for_carry_out(WAIT_S)
    wave = _wave(fleet, rollout_id, 0)
    rows = _rows(fleet, rollout_id)
    assert {rows[d] for d in wave} == {"reverted"}
    assert _on(fleet, NEW) == set()
    assert _on(fleet, OLD) == set(fleet.devices)
    # the batch in flight was signed the candidate, then signed back (versions 2 and 3);
    # the rest of the wave was never signed anything
    director = fleet.repo.layout.director_metadata
    assert {current_versions(director(d))[0] for d in in_flight} == {3}
    assert {current_versions(director(d))[0] for d in wave - in_flight} == {1}
    view = fleet.get(f"/rollouts/{rollout_id}").json
    assert view["device_states"]["rolled_back"] == 15


def test_an_abort_during_signing_keeps_what_was_signed_and_signs_no_more(
        fleet: Fleet) -> None:
    service, gated, rollout_id, in_flight = _held_first_batch(fleet)
    assert _operator(fleet, f"/rollouts/{rollout_id}/abort")["status"] == "aborted"
    gated.release.set()
    assert service.wait_for_carry_out(WAIT_S)
    rows = _rows(fleet, rollout_id)
    assert _on(fleet, NEW) == in_flight
    assert {rows[d] for d in in_flight} == {"assigned"}
    assert {rows[d] for d in set(fleet.devices) - in_flight} == {"pending"}
    # rolling the aborted rollout back returns exactly the devices that got it
    _operator(fleet, f"/rollouts/{rollout_id}/rollback")
    assert service.wait_for_carry_out(WAIT_S)
    assert _on(fleet, OLD) == set(fleet.devices)
    rows = _rows(fleet, rollout_id)
    assert {rows[d] for d in in_flight} == {"reverted"}


def test_a_pause_during_signing_holds_the_rest_of_the_wave_until_resumed(
        fleet: Fleet) -> None:
    service, gated, rollout_id, in_flight = _held_first_batch(fleet)
    assert _operator(fleet, f"/rollouts/{rollout_id}/pause")["status"] == "paused"
    gated.release.set()
    assert service.wait_for_carry_out(WAIT_S)
    assert _on(fleet, NEW) == in_flight
    service.tick()  # a paused rollout pushes the candidate to no one
    assert service.wait_for_carry_out(WAIT_S)
    assert _on(fleet, NEW) == in_flight
    assert list(_rows(fleet, rollout_id).values()).count("assigning") == 10
    assert _operator(fleet, f"/rollouts/{rollout_id}/resume")["status"] == "running"
    assert service.wait_for_carry_out(WAIT_S)
    assert _on(fleet, NEW) == _wave(fleet, rollout_id, 0)


def test_no_wave_advances_before_the_current_one_is_wholly_signed(fleet: Fleet) -> None:
    service, gated = _service(fleet)
    gated.hold = True
    rollout_id = _create(fleet, waves=[0.5, 1.0], gates={**INSTALL_ONLY,
                                                         "max_install_failure_rate": None})
    assert gated.entered.wait(WAIT_S)
    service.tick()  # no gate holds it back, but the wave is not signed yet
    view = fleet.get(f"/rollouts/{rollout_id}").json
    assert view["wave"] == 0
    gated.release.set()
    assert service.wait_for_carry_out(WAIT_S)
    service.tick()
    assert service.wait_for_carry_out(WAIT_S)
    assert fleet.get(f"/rollouts/{rollout_id}").json["wave"] == 1
    service.tick()
    assert service.wait_for_carry_out(WAIT_S)
    assert fleet.get(f"/rollouts/{rollout_id}").json["status"] == "completed"
    assert _on(fleet, NEW) == set(fleet.devices)


def test_a_kill_between_signing_and_recording_resumes_without_losing_a_device(
        fleet: Fleet) -> None:
    service, gated = _service(fleet)
    gated.fail_after_signing = True
    rollout_id = _create(fleet)
    assert service.wait_for_carry_out(WAIT_S)
    first = set(gated.batches[0])
    rows = _rows(fleet, rollout_id)
    assert {rows[d] for d in first} == {"assigning"}  # signed, not recorded
    assert _on(fleet, NEW) == first
    # a new process: a new service on the same database finishes the wave
    fleet.services.extras.pop(EXTRAS_KEY)
    restarted = rollout_service(fleet.services)
    restarted.tick()
    assert restarted.wait_for_carry_out(WAIT_S)
    wave = _wave(fleet, rollout_id, 0)
    assert _on(fleet, NEW) == wave
    rows = _rows(fleet, rollout_id)
    assert {rows[d] for d in wave} == {"assigned"}
    # a roll back still returns the devices signed before the kill to their old bundle
    previous = dict(fleet.services.store.db.execute(
        "SELECT device_id, previous_target FROM rollout_devices WHERE rollout_id = ?",
        [rollout_id]).fetchall())
    assert {previous[d] for d in wave} == {OLD}
    fleet.post(f"/rollouts/{rollout_id}/rollback", {})
    assert restarted.wait_for_carry_out(WAIT_S)
    assert _on(fleet, OLD) == set(fleet.devices)


# -- found by review: signed-but-unrecorded rows and the create-time read ---------------


def test_an_abort_after_a_failed_batch_still_lets_a_roll_back_undo_it(fleet: Fleet) -> None:
    """A batch signed but never recorded (the server killed in between), then a restart
    and an abort: the abort must not mark those devices as never signed, or the later
    roll back would leave them on the candidate."""
    service, gated = _service(fleet)
    gated.fail_after_signing = True
    rollout_id = _create(fleet)
    assert service.wait_for_carry_out(WAIT_S)
    first = set(gated.batches[0])
    assert {_rows(fleet, rollout_id)[d] for d in first} == {"assigning"}
    assert _on(fleet, NEW) == first
    fleet.services.extras.pop(EXTRAS_KEY)  # a restart: nothing is in flight any more
    restarted = rollout_service(fleet.services)
    assert fleet.post(f"/rollouts/{rollout_id}/abort", {}).status_code == 200
    assert restarted.wait_for_carry_out(WAIT_S)
    rows = _rows(fleet, rollout_id)
    assert {rows[d] for d in first} == {"assigned"}  # settled from the director
    assert fleet.post(f"/rollouts/{rollout_id}/rollback", {}).status_code == 200
    restarted.tick()
    assert restarted.wait_for_carry_out(WAIT_S)
    assert _on(fleet, NEW) == set()


def _shadowed(fleet: Fleet) -> set[str]:
    out = set()
    for device_id in fleet.devices:
        assigned = fleet.repo.assignment(device_id)
        custom = {} if assigned is None else assigned.unrecognized_fields.get("custom", {})
        if custom.get("edgefleet", {}).get("shadow"):
            out.add(device_id)
    return out


def test_a_roll_back_after_a_failed_shadow_batch_ends_every_shadow(fleet: Fleet) -> None:
    service, gated = _service(fleet)
    real = gated.repo.assign_many
    failed: list[str] = []

    def assign_many(assignments: list[Assignment]) -> Any:
        signed = real(assignments)
        if not failed and any(a.shadow_target for a in assignments):
            failed.extend(a.device_id for a in assignments)
            raise RuntimeError("killed between signing and recording")
        return signed

    gated.assign_many = assign_many  # type: ignore[method-assign]
    rollout_id = _create(fleet, shadow={"sample_rate": 0.5})
    assert service.wait_for_carry_out(WAIT_S)
    assert failed and set(failed) <= _shadowed(fleet)
    assert fleet.post(f"/rollouts/{rollout_id}/rollback", {}).status_code == 200
    service.tick()
    assert service.wait_for_carry_out(WAIT_S)
    assert _shadowed(fleet) == set()


def test_create_reads_what_devices_run_under_the_rollouts_lock(fleet: Fleet) -> None:
    """Another rollout's signed roll back is recorded under the rollouts lock: reading the
    devices' current assignments outside it could record a version that was just rolled
    back as where a roll back of the new rollout returns."""
    service, gated = _service(fleet)
    real = gated.repo.assigned_targets
    held: list[bool] = []

    def assigned_targets(device_ids: list[str]) -> Any:
        held.append(service.lock._is_owned())  # type: ignore[attr-defined]
        return real(device_ids)

    gated.assigned_targets = assigned_targets  # type: ignore[attr-defined]
    _create(fleet)
    assert held and held[0] is True
