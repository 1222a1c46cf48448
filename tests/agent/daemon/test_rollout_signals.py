"""What staged rollouts need from a device, end to end with real parts.

A real fleet-server update repository over HTTP, a real Mosquitto, real ONNX bundles and
the real daemon running its update agent: the server's ``desired`` hint wakes the
updater early (malformed hints are ignored), the director's shadow candidate runs on
real predict inputs off the request path and is reported per served version in the
heartbeat, and only the active model ever answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.daemon.client import AgentClient
from edgefleet.agent.daemon.config import load_config
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.runtime import load_model
from edgefleet.agent.telemetry.envelope import Channel, Envelope, encode, topic
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from tests.agent.daemon.support import Models, write_config
from tests.agent.telemetry.support import Collector, new_device_id, wait_until
from tests.agent.update.support import assignment_for, build_bundle
from tests.fleet_server.updates.harness import RepoServer, repo_server

SIZES = (16, 8, 4)  # the daemon's configured mlp takes 16 features too


def enroll(server: RepoServer, state_dir: Path, device: str) -> Path:
    """What ``edgefleet agent enroll`` leaves in the state directory."""
    state_dir.mkdir(parents=True)
    key = Ed25519PrivateKey.generate()
    (state_dir / "device_key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (state_dir / "enrollment.json").write_text(json.dumps({
        "format": 1, "device_id": device, "server_url": server.api_url.removesuffix("/api/v1"),
        "broker": {"url": "mqtt://127.0.0.1:1", "username": device, "password": "x"},
        "group": None, "key_file": "device_key.pem",
        "update_root": {"image": json.loads(server.image_root()),
                        "director": json.loads(server.director_root())}}))
    return state_dir


class Server:
    """The fleet server's side: the repositories and a publisher of ``desired``."""

    def __init__(self, repo: RepoServer, mosquitto: Any, device: str) -> None:
        self.repo = repo
        self.device = device
        self.seq = 0
        self.mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id=new_device_id())
        self.mqtt.connect(mosquitto.host, mosquitto.port)
        self.mqtt.loop_start()

    def desired(self, body: Any) -> None:
        self.seq += 1
        env = Envelope(Channel.DESIRED, self.device, 1, self.seq, time.time(), False, body)
        self.mqtt.publish(topic(self.device, Channel.DESIRED), encode(env), qos=1,
                          retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.mqtt.publish(topic(self.device, Channel.DESIRED), b"", qos=1,
                          retain=True).wait_for_publish(5)
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def hint(target: Path, shadow: Path | None = None, rate: float = 1.0) -> dict[str, Any]:
    return {"model": "mlp", "version": target.stem, "target": target.name, "rollout": 7,
            "shadow": None if shadow is None else {"version": shadow.stem,
                                                   "target": shadow.name, "sample_rate": rate}}


@pytest.fixture
def setup(tmp_path: Path, models: Models, mosquitto: Any
          ) -> Iterator[tuple[Daemon, Server, Collector]]:
    device = new_device_id()
    with repo_server(tmp_path / "server") as repo:
        state_dir = enroll(repo, tmp_path / "state", device)
        config = load_config(write_config(
            tmp_path / "agent.toml",
            {"state_dir": state_dir, "listen": "127.0.0.1:0", "flush_interval_s": 0.05,
             "heartbeat_s": 1.0},
            [{"name": "mlp", "path": models.mlp, "version": "1.0.0", "sample_rate": 0.0}],
            {"telemetry": {"enabled": True},
             "updates": {"enabled": True, "model": "mlp", "interval_s": 3600}}))
        server = Server(repo, mosquitto, device)
        collector = Collector(mosquitto.host, mosquitto.port).start()
        daemon = Daemon(config, broker=BrokerConfig.from_url(mosquitto.url), device_id=device)
        try:
            daemon.start()
            updater = daemon._updater
            updater.min_early_check_s = 0.2  # the 5 s default would only slow the test
            wait_until(lambda: updater.machine.verifier.checks >= 1, 30, "the first check")
            yield daemon, server, collector
        finally:
            daemon.stop()
            collector.stop()
            server.close()


def stats(daemon: Daemon) -> dict[str, Any]:
    return daemon.stats.snapshot()["models"]["mlp"]


def test_desired_hint_wakes_the_updater_and_shadow_is_compared_off_path(
        setup: tuple[Daemon, Server, Collector], tmp_path: Path) -> None:
    daemon, server, collector = setup
    updater = daemon._updater
    bundles = tmp_path / "bundles"
    v1 = build_bundle(bundles, "1", seed=1, sizes=SIZES)
    twin = build_bundle(bundles, "1b", seed=1, sizes=SIZES)  # the same weights
    v2 = build_bundle(bundles, "2", seed=2, sizes=SIZES)    # other weights
    for b in (v1, twin, v2):
        server.repo.repo.add_bundle(b, b.name)
    client = AgentClient(daemon.url)
    rng = np.random.default_rng(5)

    # malformed hints are logged and ignored: no early check is even requested
    server.desired({"model": "mlp", "target": v1.name})
    server.desired({**hint(v1, twin), "shadow": {"version": "x", "target": "y",
                                                  "sample_rate": 5}})
    wait_until(lambda: daemon.desired_rejected == 2, 30, "both hints rejected")
    assert updater._early_due is None and updater.early_checks == 0
    assert updater.installed_target is None

    # the director assigns v1 with a twin in shadow; the hint wakes the updater
    # (its interval is an hour: only an early check can install it)
    server.repo.repo.assign(server.device, v1.name, shadow_target=twin.name, shadow_rate=1.0)
    server.desired(hint(v1, twin))
    wait_until(lambda: updater.shadow_target == twin.name, 60, "v1 and its shadow")
    assert updater.early_checks >= 1
    assert daemon.desired is not None and daemon.desired.rollout == 7
    key1 = assignment_for(v1).key
    # the bundle key identifies the bytes; telemetry speaks the manifest's version
    assert updater.holder.label == key1 and stats(daemon)["version"] == "1"

    def predict(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(-1, 1, (n, 16)).astype(np.float32)
        served = np.concatenate([client.predict("mlp", {"input": row[None].tolist()})
                                 .outputs["probabilities"] for row in x])
        return x, served

    x, served = predict(60)
    with load_model(bundles / "1.onnx") as active:
        np.testing.assert_allclose(served, active.predict({"input": x})["probabilities"],
                                   rtol=1e-5, atol=1e-6)
    wait_until(lambda: stats(daemon).get("shadow", {}).get("compared") == 60, 30,
               "60 shadow comparisons")
    shadow = stats(daemon)["shadow"]
    assert shadow["version"] == "1b"
    assert shadow["agreed"] == 60 and shadow["latency_ms"]["p50"] > 0
    assert stats(daemon)["predictions"] == 60

    # a shifted candidate disagrees; the served outputs are still v1's alone
    server.repo.repo.assign(server.device, v1.name, shadow_target=v2.name, shadow_rate=1.0)
    server.desired(hint(v1, v2))
    wait_until(lambda: stats(daemon).get("shadow", {}).get("version") == "2", 60,
               "the v2 shadow")
    x, served = predict(100)
    with load_model(bundles / "1.onnx") as active, load_model(bundles / "2.onnx") as other:
        np.testing.assert_allclose(served, active.predict({"input": x})["probabilities"],
                                   rtol=1e-5, atol=1e-6)
        shifted = other.predict({"input": x})["probabilities"]
    expected_agreement = int((shifted.argmax(1) == served.argmax(1)).sum())
    assert expected_agreement < 90
    wait_until(lambda: stats(daemon)["shadow"]["compared"] == 100, 30, "100 comparisons")
    assert stats(daemon)["shadow"]["agreed"] == expected_agreement
    assert stats(daemon)["predictions"] == 160  # the active version did not change

    def heartbeat_mlp() -> dict[str, Any]:
        beats = collector.of(server.device, Channel.HEARTBEAT)
        return beats[-1].envelope.body["models"]["mlp"] if beats else {}

    wait_until(lambda: heartbeat_mlp().get("shadow", {}).get("compared") == 100, 30,
               "a heartbeat with the shadow figures")
    beat = heartbeat_mlp()
    assert set(beat) == {"version", "predictions", "errors", "sampled", "latency_ms",
                         "feedback", "shadow"}
    assert set(beat["shadow"]) == {"version", "compared", "agreed", "latency_ms"}
    assert beat["version"] == "1" and set(beat["feedback"]) == {"labeled", "correct"}

    # the assignment drops the shadow: shadowing stops
    server.repo.repo.assign(server.device, v1.name)
    server.desired(hint(v1))
    wait_until(lambda: updater.shadow_target is None, 60, "the shadow to stop")
    wait_until(lambda: "shadow" not in heartbeat_mlp(), 30, "a heartbeat without shadow")
    assert daemon.health()["shadow"] is None

    # an over-the-air swap to v2: the counters start again for the new version
    server.repo.repo.assign(server.device, v2.name)
    server.desired(hint(v2))
    key2 = assignment_for(v2).key
    wait_until(lambda: updater.holder.label == key2, 60, "v2 installed")
    fresh = stats(daemon)
    assert fresh["version"] == "2" and fresh["predictions"] == 0
    assert fresh["feedback"] == {"labeled": 0, "correct": 0}
    predict(3)
    wait_until(lambda: stats(daemon)["predictions"] == 3, 30, "3 predictions of v2")
    assert not [e for e in updater.reporter.events() if e["kind"] == "error"]
