"""A/B tests through the real app: randomized arms assigned through the director, the
comparison with its significance test, busy devices, and stopping."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.fleet_server.auth.roles import Role
from tests.fleet_server.rollouts.test_service import Fleet, fleet_env

BODY = {"model": "vision", "a": "1.0", "b": "1.1", "target": {"group": "cams"},
        "metric": "accuracy", "min_samples": 200}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_env(tmp_path, 12) as env:
        yield env


def _report(fleet: Fleet, device_id: str, version: str, *, labeled: int, correct: int,
            p95: float) -> None:
    """What ingestion stores from a device's heartbeat (per model version)."""
    with fleet.services.store.transaction() as db:
        db.execute(
            "INSERT OR REPLACE INTO ingest_model_stats (device_id, model, version,"
            " predictions, p50_ms, p95_ms, labeled, correct, ts, updated_at)"
            " VALUES (?, 'vision', ?, ?, ?, ?, ?, ?, ?, '2026-11-23T00:00:00+00:00')",
            [device_id, version, labeled, p95 / 2, p95, labeled, correct, time.time()])


def _arms(view: dict[str, Any], fleet: Fleet) -> dict[str, list[str]]:
    rows = fleet.services.store.db.execute(
        "SELECT device_id, arm FROM experiment_devices WHERE experiment_id = ?",
        [view["id"]]).fetchall()
    return {arm: sorted(d for d, a in rows if a == arm) for arm in ("a", "b")}


def test_arms_are_assigned_and_the_better_version_wins(fleet: Fleet) -> None:
    rv = fleet.post("/experiments", BODY)
    assert rv.status_code == 201, rv.json
    view = rv.json
    arms = _arms(view, fleet)
    assert len(arms["a"]) == len(arms["b"]) == 6
    for arm, target in (("a", "vision-1.0.tar"), ("b", "vision-1.1.tar")):
        for device_id in arms[arm]:
            assigned = fleet.repo.assignment(device_id)
            assert assigned is not None and assigned.path == target
    # not enough labels yet: no winner, and it says so
    assert view["verdict"]["winner"] is None
    assert "too few samples" in view["verdict"]["reason"]
    for device_id in arms["a"]:
        _report(fleet, device_id, "1.0", labeled=100, correct=80, p95=2.0)
    for device_id in arms["b"]:
        _report(fleet, device_id, "1.1", labeled=100, correct=90, p95=2.1)
    view = fleet.get(f"/experiments/{view['id']}").json
    assert view["arms"]["a"]["value"] == pytest.approx(0.8)
    assert view["arms"]["b"]["value"] == pytest.approx(0.9)
    assert view["verdict"]["winner"] == "b" and view["verdict"]["significant"]
    assert view["verdict"]["confidence"] > 0.99
    assert view["test"]["n_a"] == view["test"]["n_b"] == 600


def test_latency_metric_prefers_the_faster_arm(fleet: Fleet) -> None:
    view = fleet.post("/experiments", {**BODY, "metric": "latency_p95",
                                       "min_samples": 4}).json
    arms = _arms(view, fleet)
    for i, device_id in enumerate(arms["a"]):
        _report(fleet, device_id, "1.0", labeled=0, correct=0, p95=2.0 + 0.05 * i)
    for i, device_id in enumerate(arms["b"]):
        _report(fleet, device_id, "1.1", labeled=0, correct=0, p95=3.0 + 0.05 * i)
    verdict = fleet.get(f"/experiments/{view['id']}").json["verdict"]
    assert verdict["winner"] == "a" and verdict["significant"]


def test_devices_of_an_experiment_are_busy_until_it_stops(fleet: Fleet) -> None:
    experiment = fleet.post("/experiments", BODY).json["id"]
    rv = fleet.post("/rollouts", {"model": "vision", "version": "1.1",
                                  "target": {"group": "cams"}})
    assert rv.status_code == 409
    assert "rollout or experiment" in rv.json["error"]["message"]
    assert fleet.post("/experiments", BODY).status_code == 409
    stopped = fleet.post(f"/experiments/{experiment}/stop", {"reason": "enough"}).json
    assert stopped["status"] == "stopped"
    assert fleet.post(f"/experiments/{experiment}/stop", {}).status_code == 409
    entries, _ = fleet.services.audit.list(action="experiment.stop")
    assert entries[0]["after"]["reason"] == "enough"
    assert fleet.post("/rollouts", {"model": "vision", "version": "1.1",
                                    "target": {"group": "cams"}}).status_code == 201


@pytest.mark.parametrize(("body", "status"), [
    ({**BODY, "b": "1.0"}, 404),
    ({**BODY, "metric": "vibes"}, 400),
    ({**BODY, "target": {"devices": ["x"]}}, 400),
    ({**BODY, "share_a": 1.0}, 400),
    ({**BODY, "a": "7.7"}, 404),
])
def test_bad_experiments_get_clear_errors(fleet: Fleet, body: dict[str, Any],
                                          status: int) -> None:
    rv = fleet.post("/experiments", body)
    assert rv.status_code == status, rv.json


def test_experiment_roles(fleet: Fleet) -> None:
    assert fleet.post("/experiments", BODY, role=Role.VIEWER).status_code == 403
    experiment = fleet.post("/experiments", BODY).json["id"]
    assert fleet.get("/experiments").json["total"] == 1
    assert fleet.get(f"/experiments/{experiment}").status_code == 200
    assert fleet.get("/experiments/12345").status_code == 404
