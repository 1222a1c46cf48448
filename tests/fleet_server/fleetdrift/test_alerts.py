"""Alerts with hysteresis: opened after k_on drifted windows, closed only after k_off
clear windows, the state surviving a restart (a new app on the same database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.drift import (
    DetectorState,
    DriftThresholds,
    ReferenceProfile,
    SummaryBuilder,
    WindowStatus,
    WindowSummary,
)
from edgefleet.fleet_server.fleetdrift import FleetDriftSettings, jobs
from edgefleet.fleet_server.fleetdrift.alerts import AlertEvent, evaluate_scope
from tests.fleet_server.fleetdrift.support import MODEL, VERSION, DriftEnv, open_env, rows

THRESHOLDS = DriftThresholds(k_on=2, k_off=3)


@pytest.fixture
def settings() -> FleetDriftSettings:
    return FleetDriftSettings(thresholds=THRESHOLDS)


def _window(reference: ReferenceProfile, seed: int, shift: float = 0.0) -> WindowSummary:
    builder = SummaryBuilder(reference, model_version=VERSION)
    builder.add_batch(*rows(seed, shift=shift))
    return builder.finish(float(seed), float(seed) + 60.0)


def test_evaluate_scope_is_pure_hysteresis(reference: ReferenceProfile) -> None:
    drifted = [_window(reference, s, shift=1.0) for s in (1, 2)]
    clear = [_window(reference, s) for s in (3, 4, 5)]
    first = evaluate_scope(reference, THRESHOLDS, DetectorState(), drifted[:1])
    assert first.transitions == () and first.state.over_streak == 1
    assert first.last_status is WindowStatus.OVER
    opened = evaluate_scope(reference, THRESHOLDS, first.state, drifted[1:])
    assert [t.event for t in opened.transitions] == [AlertEvent.OPENED]
    still = evaluate_scope(reference, THRESHOLDS, opened.state, clear[:2])
    assert still.transitions == () and still.state.alarm and still.state.clear_streak == 2
    closed = evaluate_scope(reference, THRESHOLDS, still.state, clear[2:])
    assert [t.event for t in closed.transitions] == [AlertEvent.CLOSED]
    assert not closed.state.alarm
    assert closed.state.windows == 5


def _alerts(env: DriftEnv, query: str = "") -> Any:
    return env.get(f"/api/v1/drift/alerts?scope=device{query}")


def test_alert_hysteresis_survives_restart(env: DriftEnv, tmp_path: Path,
                                           settings: FleetDriftSettings) -> None:
    device = env.enroll()
    (name, interval_s, run), = jobs(env.services)
    assert name == "fleetdrift.evaluate" and interval_s == settings.evaluation_interval_s

    env.store_window(device, env.summary(seed=1, shift=1.0))
    run()  # the scheduled job's function: one evaluation run
    assert _alerts(env)["total"] == 0  # k_on = 2: one drifted window is not enough

    env.store_window(device, env.summary(seed=2, shift=1.0))
    stats = env.drift.evaluate()
    assert stats.windows == 1 and stats.opened == 2  # the device and the fleet (same data)
    page = _alerts(env, "&status=open")
    assert page["total"] == 1
    alert = page["items"][0]
    assert (alert["scope_id"], alert["model"], alert["version"]) == (device, MODEL, VERSION)
    assert "f0" in alert["drifted"] and alert["open_report"]["status"] == "over"

    for seed in (3, 4):  # two clear windows: k_off = 3 keeps the alert open
        env.store_window(device, env.summary(seed=seed))
        assert env.drift.evaluate().closed == 0
    assert _alerts(env, "&status=open")["total"] == 1
    data_dir, reference, token, clock = env.data_dir, env.reference, env.viewer_token, env.clock
    env.close()

    restarted = open_env(data_dir, settings, fresh=False, reference=reference,
                         viewer_token=token)
    restarted.clock[:] = clock
    try:
        assert restarted.drift.evaluate().windows == 0  # the cursor survived too
        restarted.store_window(device, restarted.summary(seed=5))
        stats = restarted.drift.evaluate()
        assert stats.closed == 2
        assert _alerts(restarted, "&status=open")["total"] == 0
        closed = _alerts(restarted, "&status=closed")["items"]
        assert [a["id"] for a in closed] == [alert["id"]]
        assert closed[0]["close_report"]["status"] == "clear"
        assert closed[0]["closed_at"] is not None

        entries, _ = restarted.services.audit.list(target_type="drift_alert")
        actions = sorted((e["action"], e["actor"]["kind"]) for e in entries)
        assert actions == [("drift.alert.close", "system")] * 2 + \
            [("drift.alert.open", "system")] * 2
        assert restarted.get(f"/api/v1/drift/alerts/{alert['id']}")["status"] == "closed"
    finally:
        restarted.close()


def test_bad_windows_are_counted_not_fatal(env: DriftEnv) -> None:
    device = env.enroll()
    with env.services.store.transaction() as db:
        db.execute("INSERT INTO drift_windows (device_id, model, version, start, \"end\", n,"
                   " summary, received_at) VALUES (?, ?, ?, 0, 1, 1, '{\"v\": 1}', '')",
                   [device, MODEL, VERSION])
    env.store_window(device, env.summary(seed=9), version="9.9.9")  # not in the registry
    env.store_window(device, env.summary(seed=10))
    stats = env.drift.evaluate()
    assert (stats.windows, stats.rejected, stats.skipped, stats.scopes) == (3, 1, 1, 2)
    assert env.drift.evaluate().windows == 0


def test_windows_binned_on_an_earlier_versions_profile_are_evaluated(env: DriftEnv) -> None:
    """After an update a device bins the new version's predictions on the profile of the
    release it was set up with: those windows count for the new version, compared against
    the profile they name (the new version here has a profile of its own, other bins)."""
    import io

    from edgefleet.fleet_server.audit import SYSTEM
    from edgefleet.fleet_server.registry.api import registry_service
    from edgefleet.fleet_server.registry.service import UploadMetadata
    from tests.fleet_server.fleetdrift.support import write_onnx

    x, y = rows(77, shift=0.5)
    own = ReferenceProfile.build(x, [c.name for c in env.reference.features], y,
                                 [c.name for c in env.reference.outputs], bins=6)
    assert own.digest != env.reference.digest
    model_file = write_onnx(env.data_dir / "model2.onnx")
    registry_service(env.services).upload(
        MODEL, "2.0.0", io.BytesIO(model_file.read_bytes()),
        UploadMetadata(reference_profile=own.to_dict()), SYSTEM)
    device = env.enroll()
    for seed in (21, 22):  # binned on 1.0.0's profile, served as 2.0.0
        env.store_window(device, env.summary(seed=seed, shift=1.0), version="2.0.0")
    stats = env.drift.evaluate()
    assert (stats.windows, stats.rejected, stats.skipped) == (2, 0, 0)
    [alert] = _alerts(env, "&status=open")["items"]
    assert (alert["version"], alert["scope_id"]) == ("2.0.0", device)
    report = env.get(f"/api/v1/drift?model={MODEL}&version=2.0.0&scope=device"
                     f"&id={device}&since=0&until=9999999999")
    assert report["windows"] == 2 and report["profile"] == env.reference.digest
    assert report["status"] == "over"
