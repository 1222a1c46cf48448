"""Ingestion as the server's broker service user through the embedded amqtt broker with the
server's own authentication (ServerBrokerAuth): an enrolled device's agent reaches the DB."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.drift import ReferenceProfile
from edgefleet.agent.telemetry import Channel, TelemetryClient, TelemetryConfig
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.broker import EmbeddedBroker
from edgefleet.fleet_server.broker_auth import ServerBrokerAuth
from edgefleet.fleet_server.datadir import load_secrets
from edgefleet.fleet_server.devices.enrollment import Enrollment, EnrollmentService
from edgefleet.fleet_server.devices.service import device_service
from edgefleet.fleet_server.ingest import start_ingestion
from edgefleet.fleet_server.ingest.service import device_telemetry
from tests.agent.telemetry.support import wait_until
from tests.fleet_server.ingest.support import MODEL, VERSION, window_summary
from tests.fleet_server.support import Env


@pytest.fixture
def embedded(env: Env) -> Iterator[EmbeddedBroker]:
    secrets = load_secrets(env.init.data_dir)
    auth = ServerBrokerAuth(env.services.store, device_service(env.services),
                            secrets.broker_username)
    broker = EmbeddedBroker("127.0.0.1", 0, auth=auth)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def enroll(env: Env) -> Enrollment:
    service = EnrollmentService(env.services.store, env.services.audit)
    _, token = service.create_token(SYSTEM)
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return service.enroll(token, base64.b64encode(raw).decode())


def test_enrolled_agent_through_embedded_broker(env: Env, profile: ReferenceProfile,
                                                embedded: EmbeddedBroker,
                                                tmp_path: Path) -> None:
    secrets = load_secrets(env.init.data_dir)
    handle = start_ingestion(env.services, embedded.url, secrets.broker_username,
                             secrets.broker_password)
    try:
        assert handle.wait_connected(15), "service user could not subscribe"
        device = enroll(env)
        config = BrokerConfig.from_url(embedded.url, device.broker_username,
                                       device.broker_password)
        client = TelemetryClient(device.device_id, config, tmp_path / "agent",
                                 TelemetryConfig(heartbeat_s=0.3), models={MODEL: VERSION})
        client.start()
        try:
            client.publish(Channel.DRIFT, {"model": MODEL, "version": VERSION,
                                           "summary": window_summary(profile).to_dict()})
            wait_until(lambda: env.services.store.db["drift_windows"].count_where(
                "device_id = ?", [device.device_id]) == 1, what="drift window")
            wait_until(lambda: (device_telemetry(env.services.store, device.device_id)
                                or {}).get("heartbeat") is not None, what="heartbeat")
        finally:
            client.stop()
        telemetry = device_telemetry(env.services.store, device.device_id)
        assert telemetry is not None and telemetry["inventory"]["models"] == {MODEL: VERSION}
    finally:
        handle.stop()
