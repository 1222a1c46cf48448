"""Fixtures of the ingest tests: the app with ingestion, a registered reference profile,
ingestion running against the session Mosquitto, a raw MQTT publisher."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.drift import ReferenceProfile
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.ingest import IngestionHandle, start_ingestion
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from tests.fleet_server.ingest.support import MODEL, VERSION, make_ingest_env, reference_profile
from tests.fleet_server.registry.conftest import make_onnx
from tests.fleet_server.support import Env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = make_ingest_env(tmp_path / "data")
    yield environment
    environment.services.store.close()


@pytest.fixture
def profile(env: Env, tmp_path: Path) -> ReferenceProfile:
    """MODEL VERSION registered in the real registry with a reference profile."""
    ref = reference_profile()
    model_file = make_onnx(tmp_path / "model.onnx", n_features=3, n_out=1)
    with model_file.open("rb") as f:
        registry_service(env.services).upload(
            MODEL, VERSION, f, UploadMetadata(reference_profile=ref.to_dict()), SYSTEM)
    return ref


@pytest.fixture
def ingestion(env: Env, profile: ReferenceProfile, mosquitto: Any) -> Iterator[IngestionHandle]:
    """Ingestion on the session Mosquitto (anonymous), reading references from the registry."""
    handle = start_ingestion(env.services, mosquitto.url, None, None,
                             client_id=f"ingest-{uuid.uuid4().hex[:8]}", persistent=False)
    assert handle.wait_connected(10), "ingestion did not subscribe"
    handle.ingester.wait_idle(10)  # retained status messages of earlier tests
    yield handle
    handle.stop()


class Publisher:
    """A raw paho publisher (QoS 1) for hand-made and malformed payloads."""

    def __init__(self, host: str, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"pub-{uuid.uuid4().hex[:8]}")
        self.client.max_queued_messages_set(0)
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.connected.wait(10)

    def publish(self, topic: str, payload: bytes) -> paho.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=1)
        assert info.rc == paho.MQTT_ERR_SUCCESS, info.rc
        return info

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.publish(t, p) for t, p in messages]
        for info in infos:
            info.wait_for_publish(60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Any) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.host, mosquitto.port)
    yield pub
    pub.close()
