"""Real agents (TelemetryClient) → session Mosquitto → ingestion → database and API."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.drift import ReferenceProfile
from edgefleet.agent.telemetry import Channel, TelemetryClient, TelemetryConfig
from edgefleet.agent.telemetry.envelope import encode, topic
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from edgefleet.fleet_server.devices.service import device_service
from edgefleet.fleet_server.ingest import IngestionHandle, start_ingestion
from edgefleet.fleet_server.ingest.service import ingest_stats
from tests.agent.telemetry.support import Collector, new_device_id, wait_until
from tests.fleet_server.ingest.conftest import Publisher
from tests.fleet_server.ingest.support import (
    HEARTBEAT,
    MODEL,
    VERSION,
    Role,
    envelope,
    window_summary,
)
from tests.fleet_server.support import Env

STATS = {"models": {MODEL: {"predictions": 42, "latency_ms": {"p50": 0.8, "p95": 2.1}}}}


def agent(device: str, url: str, state_dir: Path) -> TelemetryClient:
    client = TelemetryClient(device, BrokerConfig.from_url(url), state_dir,
                             TelemetryConfig(heartbeat_s=0.3), models={MODEL: VERSION},
                             stats=lambda: STATS)
    client.start()
    return client


def enrolled_device(env: Env) -> str:
    """A device enrolled through the real enrollment service (so inventory lands on it)."""
    from edgefleet.fleet_server.audit import SYSTEM
    from edgefleet.fleet_server.devices.enrollment import EnrollmentService

    enrollment = EnrollmentService(env.services.store, env.services.audit)
    _, secret = enrollment.create_token(SYSTEM)
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return enrollment.enroll(secret, base64.b64encode(raw).decode()).device_id


def count(env: Env, table: str, device: str) -> int:
    return int(env.services.store.db[table].count_where("device_id = ?", [device]))


def get(env: Env, path: str, role: Role = Role.VIEWER) -> Any:
    rv = env.client.get(f"/api/v1{path}", headers=env.auth(role))
    assert rv.status_code == 200, (path, rv.status_code, rv.json)
    return rv.json


def test_agents_reach_database_and_api_and_replays_are_dropped(
        env: Env, profile: ReferenceProfile, ingestion: IngestionHandle, mosquitto: Any,
        publisher: Publisher, tmp_path: Path) -> None:
    dev_a, dev_b = enrolled_device(env), new_device_id()
    capture = Collector(mosquitto.host, mosquitto.port).start()
    a = agent(dev_a, mosquitto.url, tmp_path / "a")
    b = agent(dev_b, mosquitto.url, tmp_path / "b")
    try:
        for i in range(3):
            a.publish(Channel.PREDICTIONS, {"model": MODEL, "version": VERSION, "records": [
                {"id": f"p{i}-{j}", "ts": 1000.0 + j, "y": [j / 10]} for j in range(10)]})
        summary = window_summary(profile)
        a.publish(Channel.DRIFT, {"model": MODEL, "version": VERSION,
                                  "summary": summary.to_dict()})
        rejected_seq = a.publish(Channel.DRIFT, {"model": MODEL, "version": "0.0.404",
                                                 "summary": summary.to_dict()})  # unknown
        b.publish(Channel.EVENTS, {"events": [{"ts": 5.0, "kind": "state", "state": "idle"}]})

        def stored() -> bool:
            return (count(env, "ingest_predictions", dev_a) == 30
                    and count(env, "drift_windows", dev_a) == 1
                    and count(env, "ingest_events", dev_b) == 1
                    and count(env, "ingest_latency", dev_a) == 1
                    and count(env, "ingest_latency", dev_b) == 1)

        wait_until(stored, what="agent telemetry in the database")
    finally:
        a.stop()
    wait_until(lambda: get(env, f"/devices/{dev_a}/telemetry")["presence"]["state"]
               == "offline", what="offline status")
    b.stop()

    # database: the drift window in the fixed schema, validated summary JSON
    row = next(iter(env.services.store.db["drift_windows"].rows_where("device_id = ?",
                                                                      [dev_a])))
    assert (row["model"], row["version"], row["n"]) == (MODEL, VERSION, 500)
    assert (row["start"], row["end"]) == (1000.0, 1060.0)
    assert row["received_at"].endswith("+00:00")
    # inventory reached the enrolled device through DeviceService.update_inventory
    inventory = device_service(env.services).get_device(dev_a)["inventory"]
    assert inventory["models"] == {MODEL: VERSION}

    # API
    tele = get(env, f"/devices/{dev_a}/telemetry")
    assert tele["presence"]["last_seen_at"]
    assert tele["inventory"]["models"] == {MODEL: VERSION}
    assert tele["latency"] == [{"model": MODEL, "predictions": 42, "p50_ms": 0.8,
                                "p95_ms": 2.1, "ts": tele["latency"][0]["ts"],
                                "updated_at": tele["latency"][0]["updated_at"]}]
    assert tele["heartbeat"]["body"]["uptime_s"] >= 0
    assert tele["sequence"]["duplicates"] == 0
    # the rejected window's seq is a hole once a later message (a heartbeat) was accepted
    later = tele["sequence"]["max_seq"] > rejected_seq
    assert (tele["sequence"]["gaps"], tele["sequence"]["missing"]) == (0, 1 if later else 0)
    page = get(env, f"/devices/{dev_a}/predictions?limit=7&offset=0")
    assert page["total"] == 30 and len(page["items"]) == 7
    assert page["items"][0]["record"]["id"] == "p2-9"  # newest first
    assert get(env, f"/devices/{dev_a}/predictions?model=other")["total"] == 0
    assert env.client.get("/api/v1/ingest/stats",
                          headers=env.auth(Role.VIEWER)).status_code == 403
    assert env.client.get(f"/api/v1/devices/{dev_a}/telemetry").status_code == 401
    assert env.client.get("/api/v1/devices/nobody/telemetry",
                          headers=env.auth(Role.VIEWER)).status_code == 404
    stats = get(env, "/ingest/stats", Role.OPERATOR)
    assert stats["rejected"]["by_reason"]["unknown_model_version"] == 1
    assert stats["connected"] is True and stats["devices"] >= 2

    # a device replays everything it sent: all dropped as duplicates, nothing new stored
    sent = [m.envelope for m in capture.of(dev_a) + capture.of(dev_b) if not m.retain]
    capture.stop()
    before = ingest_stats(env.services.store)
    rows_before = {t: count(env, t, dev_a) for t in ("ingest_predictions", "drift_windows")}
    publisher.publish_all([(topic(e.device, e.type), encode(e)) for e in sent])
    # Counted by effect, not by "received": the session broker may still deliver retained
    # messages of earlier tests' devices to this ingester meanwhile.
    # The unknown-version drift window was never accepted: its replay is rejected again.
    wait_until(lambda: ingest_stats(env.services.store)["duplicates"]
               == before["duplicates"] + len(sent) - 1, what="replay processed")
    after = ingest_stats(env.services.store)
    assert (after["rejected"]["by_reason"]["unknown_model_version"]
            == before["rejected"]["by_reason"]["unknown_model_version"] + 1)
    assert {t: count(env, t, dev_a) for t in rows_before} == rows_before

    # wrong device: a's envelope on b's topic
    wrong = envelope(Channel.HEARTBEAT, dev_a, HEARTBEAT, seq=10**6)
    publisher.publish_all([(topic(dev_b, Channel.HEARTBEAT), wrong)])
    wait_until(lambda: ingest_stats(env.services.store)["rejected"]["by_reason"]
               ["wrong_device"] == 1, what="wrong device rejection")


def test_dedup_state_survives_an_ingestion_restart(
        env: Env, profile: ReferenceProfile, ingestion: IngestionHandle, mosquitto: Any,
        publisher: Publisher) -> None:
    device = new_device_id()
    messages = [(topic(device, Channel.HEARTBEAT),
                 envelope(Channel.HEARTBEAT, device, HEARTBEAT, seq=s)) for s in (1, 2, 4)]

    def sequence() -> dict[str, int]:
        rv = env.client.get(f"/api/v1/devices/{device}/telemetry",
                            headers=env.auth(Role.VIEWER))
        body = rv.json if rv.status_code == 200 else None
        return dict(body["sequence"]) if body else {}

    publisher.publish_all(messages)
    wait_until(lambda: sequence().get("accepted") == 3, what="3 accepted")
    assert sequence()["missing"] == 1  # seq 3
    ingestion.stop()

    again = start_ingestion(env.services, mosquitto.url, None, None,
                            client_id="ingest-restarted", persistent=False)
    try:
        assert again.wait_connected(10)
        publisher.publish_all([*messages, (topic(device, Channel.HEARTBEAT),
                               envelope(Channel.HEARTBEAT, device, HEARTBEAT, seq=3))])
        wait_until(lambda: sequence().get("accepted") == 4, what="seq 3 after restart")
        wait_until(lambda: sequence().get("duplicates") == 3, what="replay dropped")
        seq = sequence()
        assert (seq["max_seq"], seq["missing"], seq["gaps"]) == (4, 0, 0)
    finally:
        again.stop()
