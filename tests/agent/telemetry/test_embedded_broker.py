"""The client against the server's embedded amqtt broker (MQTT 3.1.1, auth and ACL on)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.telemetry import TelemetryClient, TelemetryConfig
from edgefleet.agent.telemetry.envelope import Channel
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from edgefleet.fleet_server.broker import EmbeddedBroker, acl
from tests.agent.telemetry.support import Collector, wait_until

SERVER_USER = "edgefleet-server"
PASSWORDS = {SERVER_USER: "server-pw", "dev-emb": "device-pw"}
FAST = TelemetryConfig(heartbeat_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.2)


class StaticAuth:
    """Fixed passwords plus the real topic policy (device may use only its subtree)."""

    def authenticate(self, username: str, password: str) -> bool:
        return PASSWORDS.get(username) == password

    def may_publish(self, username: str, topic: str) -> bool:
        return acl.may_publish(username, topic, server_user=SERVER_USER)

    def may_subscribe(self, username: str, topic: str) -> bool:
        return acl.may_subscribe(username, topic, server_user=SERVER_USER)


@pytest.fixture
def embedded() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker("127.0.0.1", 0, StaticAuth())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_device_session_through_embedded_broker(embedded: EmbeddedBroker,
                                                tmp_path: Path) -> None:
    server = Collector("127.0.0.1", embedded.port)
    server.client.username_pw_set(SERVER_USER, PASSWORDS[SERVER_USER])
    server.start()
    config = BrokerConfig.from_url(embedded.url, "dev-emb", "device-pw")
    client = TelemetryClient("dev-emb", config, tmp_path, FAST, models={"m": "1"})
    seqs = [client.publish(Channel.DRIFT, {"window": i}) for i in range(200)]
    client.start()
    try:
        wait_until(lambda: len(server.unique("dev-emb", Channel.DRIFT)) == 200, what="drift")
        wait_until(lambda: server.of("dev-emb", Channel.HEARTBEAT), what="heartbeat")
        got = [m.envelope for m in server.of("dev-emb", Channel.DRIFT)]
        assert [e.seq for e in got] == seqs
        assert all(e.historical for e in got)  # published before the first connect
        assert server.of("dev-emb", Channel.BIRTH)[0].envelope.body["models"] == {"m": "1"}
        assert server.of("dev-emb", Channel.STATUS)[0].envelope.body == {"state": "online"}
    finally:
        client.stop()
    wait_until(lambda: server.of("dev-emb", Channel.STATUS)[-1].envelope.body
               == {"state": "offline"}, what="offline")
    server.stop()
    assert server.invalid == []


def test_refused_credentials_retry_without_losing_anything(embedded: EmbeddedBroker,
                                                           tmp_path: Path) -> None:
    config = BrokerConfig.from_url(embedded.url, "dev-emb", "wrong")
    client = TelemetryClient("dev-emb", config, tmp_path, FAST)
    client.start()
    try:
        seq = client.publish(Channel.EVENTS, {"e": "kept"})
        wait_until(lambda: client.outbox.bd >= 3, what="three refused attempts")
        stats = client.stats()
        assert stats.connects == 0 and not stats.connected
        assert [r.seq for r in client.outbox.peek(10)] == [seq]
    finally:
        client.stop()
