"""Predictions, drift windows, alarms and heartbeats reach a real Mosquitto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.daemon.client import AgentClient
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.drift import ReferenceProfile, WindowSummary
from edgefleet.agent.telemetry.envelope import Channel
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from tests.agent.daemon.support import Models, daemon_config
from tests.agent.telemetry.support import Collector, new_device_id, wait_until


@pytest.fixture
def collector(mosquitto: object) -> Iterator[Collector]:
    c = Collector(mosquitto.host, mosquitto.port).start()  # type: ignore[attr-defined]
    yield c
    c.stop()


def test_predictions_drift_and_heartbeats_reach_the_broker(
        tmp_path: Path, models: Models, mosquitto: object, collector: Collector) -> None:
    device = new_device_id()
    config = daemon_config(tmp_path, models, telemetry=True, window_s=1.0, heartbeat_s=1.0,
                           mlp={"sample_rate": 0.5, "inputs": "hash"})
    reference = ReferenceProfile.from_dict(json.loads(models.mlp_profile.read_text()))
    broker = BrokerConfig.from_url(mosquitto.url)  # type: ignore[attr-defined]
    rng = np.random.default_rng(11)
    with Daemon(config, broker=broker, device_id=device) as daemon:
        client = AgentClient(daemon.url)
        for _ in range(100):  # 1,000 rows like the reference
            client.predict("mlp", {"input": rng.uniform(-1, 1, (10, 16)).tolist()})

        def drift_rows() -> int:
            return sum(int(e.body["summary"]["features"][0]["m"][0])
                       for e in collector.unique(device, Channel.DRIFT).values())

        wait_until(lambda: drift_rows() == 1000, 30, "drift windows of 1,000 rows")
        for env in collector.unique(device, Channel.DRIFT).values():
            assert (env.body["model"], env.body["version"]) == ("mlp", "1.0.0")
            summary = WindowSummary.from_dict(env.body["summary"], reference)  # as the server
            assert summary.model_version == "1.0.0"
        wait_until(lambda: sum(len(e.body["records"]) for e in
                               collector.unique(device, Channel.PREDICTIONS).values()) > 0,
                   30, "prediction records")
        batches = list(collector.unique(device, Channel.PREDICTIONS).values())
        records = [r for e in batches for r in e.body["records"]]
        assert 20 < len(records) < 80  # half of the 100 requests, sampled
        assert len(batches) < len(records)  # many records per message
        assert all("inputs" not in r and len(r["inputs_sha256"]) == 64 for r in records)
        assert {e.body["model"] for e in batches} == {"mlp"}

        # a strong shift raises a local alarm, sent as an event
        assert daemon.predlog is not None
        daemon.predlog.close_window()
        for _ in range(100):
            daemon.predict("mlp", {"input": rng.uniform(-3, 3, (10, 16)).astype(np.float32)})
        daemon.predlog.flush()
        daemon.predlog.close_window()

        def alarms() -> list[dict]:
            return [event for e in collector.unique(device, Channel.EVENTS).values()
                    for event in e.body["events"] if event["kind"] == "drift_alarm"]

        wait_until(lambda: len(alarms()) > 0, 30, "a drift alarm event")
        alarm = alarms()[0]
        assert alarm["alarm"] is True and alarm["model"] == "mlp" and alarm["columns"]

        def heartbeat_predictions() -> int:
            beats = collector.of(device, Channel.HEARTBEAT)
            return max((b.envelope.body.get("models", {}).get("mlp", {}).get("predictions", 0)
                        for b in beats), default=0)

        wait_until(lambda: heartbeat_predictions() == 200, 30, "a heartbeat with stats")
        beat = collector.of(device, Channel.HEARTBEAT)[-1].envelope.body
        assert beat["models"]["mlp"]["latency_ms"]["p50"] > 0
        assert beat["predlog"]["dropped"] == 0
        births = collector.of(device, Channel.BIRTH)
        assert births and births[0].envelope.body["models"] == {"mlp": "1.0.0",
                                                                "digits": "2.0.0"}
    assert collector.invalid == []
