"""TelemetryClient against a real Mosquitto: birth, status, will, heartbeat, QoS 1, inbound."""

from __future__ import annotations

import json
import queue
import random
import socket
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent import agent_version
from edgefleet.agent.telemetry import TelemetryClient, TelemetryConfig
from edgefleet.agent.telemetry.client import backoff_delay
from edgefleet.agent.telemetry.envelope import Channel, Envelope, encode, topic
from edgefleet.agent.telemetry.errors import BrokerConfigError, EnvelopeError
from edgefleet.agent.telemetry.mqtt import BrokerConfig, Protocol
from edgefleet.agent.telemetry.outbox import OutboxConfig
from tests.agent.telemetry.support import Collector, new_device_id, wait_until

FAST = TelemetryConfig(heartbeat_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.5,
                       connect_timeout_s=5.0)


def _retained(host: str, port: int, name: str) -> bytes:
    """The retained payload on ``name`` as a fresh subscriber sees it."""
    got: queue.Queue[paho.MQTTMessage] = queue.Queue()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=new_device_id())
    sub.on_message = lambda c, u, m: got.put(m)
    sub.connect(host, port)
    sub.subscribe(name, qos=1)
    sub.loop_start()
    try:
        msg = got.get(timeout=10)
        assert msg.retain
        return bytes(msg.payload)
    finally:
        sub.disconnect()
        sub.loop_stop()


@pytest.mark.parametrize("protocol", [Protocol.V311, Protocol.V5])
def test_birth_status_heartbeat_and_clean_offline(
    mosquitto: object, collector: Collector, tmp_path: Path, protocol: Protocol
) -> None:
    device = new_device_id()
    broker = BrokerConfig.from_url(mosquitto.url, protocol=protocol)  # type: ignore[attr-defined]
    client = TelemetryClient(device, broker, tmp_path, FAST, models={"mnist": "1.2.0"},
                             stats=lambda: {"models": {"mnist": {"predictions": 5,
                                                                 "latency_ms": {"p50": 1.0,
                                                                                "p95": 2.0}}}})
    client.start()
    wait_until(lambda: len(collector.of(device, Channel.HEARTBEAT)) >= 2, what="heartbeats")
    birth = collector.of(device, Channel.BIRTH)[0].envelope
    assert birth.body["agent_version"] == agent_version()
    assert birth.body["models"] == {"mnist": "1.2.0"}
    assert set(birth.body["runtimes"]) == {"onnxruntime", "litert"}
    hw = birth.body["hardware"]
    assert hw["cpu_count"] >= 1 and hw["memory_bytes"] > 0 and hw["system"]
    online = collector.of(device, Channel.STATUS)[0].envelope
    assert online.body == {"state": "online"} and online.bd == birth.bd == 1
    assert online.seq > birth.seq
    beat = collector.of(device, Channel.HEARTBEAT)[-1].envelope.body
    assert beat["rss_bytes"] > 0 and beat["cpu_percent"] >= 0
    assert beat["outbox"] == {"depth": 0, "bytes": 0, "dropped": 0}
    assert beat["models"]["mnist"]["latency_ms"]["p95"] == 2.0
    assert json.loads(_retained(mosquitto.host, mosquitto.port,  # type: ignore[attr-defined]
                                topic(device, Channel.STATUS)))["body"] == {"state": "online"}
    client.stop()
    wait_until(lambda: collector.of(device, Channel.STATUS)[-1].envelope.body["state"]
               == "offline", what="clean offline")
    retained = json.loads(_retained(mosquitto.host, mosquitto.port,  # type: ignore[attr-defined]
                                    topic(device, Channel.STATUS)))
    assert retained["body"] == {"state": "offline"} and retained["bd"] == 1
    assert collector.invalid == []


def test_killed_socket_publishes_retained_will(own_broker: object, tmp_path: Path) -> None:
    """The connection dies without DISCONNECT: the broker publishes the retained offline."""
    host, port = own_broker.host, own_broker.port  # type: ignore[attr-defined]
    sub = Collector(host, port).start()
    device = new_device_id()
    slow = TelemetryConfig(heartbeat_s=60, backoff_initial_s=60, backoff_max_s=60)
    client = TelemetryClient(device, BrokerConfig.from_url(f"mqtt://{host}:{port}"), tmp_path,
                             slow)
    client.start()
    try:
        wait_until(lambda: client.connected and collector_has(sub, device, "online"),
                   what="online")
        conn = client.connection
        assert conn is not None
        sock = conn.socket()
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # like a crash: no DISCONNECT packet
        wait_until(lambda: collector_has(sub, device, "offline"), what="will")
        will = next(m for m in sub.of(device, Channel.STATUS)
                if m.envelope.body["state"] == "offline").envelope
        assert will.bd == 1
        # it is retained: a subscriber arriving later still reads "offline"
        # (the client waits 60 s before reconnecting, so nothing overwrites it)
        assert json.loads(_retained(host, port, topic(device, Channel.STATUS)))["body"] == {
            "state": "offline"}
    finally:
        client.stop()
        sub.stop()


def collector_has(sub: Collector, device: str, state: str) -> bool:
    return any(m.envelope.body.get("state") == state for m in sub.of(device, Channel.STATUS))


def test_qos1_delivers_every_message_in_order(
    collector: Collector, broker_config: BrokerConfig, tmp_path: Path
) -> None:
    device = new_device_id()
    n = 3000
    with TelemetryClient(device, broker_config, tmp_path, FAST) as client:
        seqs = [client.publish(Channel.PREDICTIONS, {"i": i}) for i in range(n)]
        assert client.wait_drained(60)
        wait_until(lambda: len(collector.unique(device, Channel.PREDICTIONS)) >= n,
                   what=f"{n} predictions")
        stats = client.stats()
    got = [m.envelope for m in collector.of(device, Channel.PREDICTIONS)]
    assert [e.seq for e in got] == seqs  # exactly once, in order, on a stable connection
    assert [e.body["i"] for e in got] == list(range(n))
    assert not any(e.historical for e in got)
    assert stats.acked == n and stats.outbox.depth == 0
    assert collector.invalid == []


def test_inbound_desired_and_cmd_reach_the_handler(
    mosquitto: object, broker_config: BrokerConfig, tmp_path: Path
) -> None:
    device = new_device_id()
    got: queue.Queue[Envelope] = queue.Queue()

    def handler(env: Envelope) -> None:
        got.put(env)
        raise RuntimeError("a failing handler must not stop dispatch")

    client = TelemetryClient(device, broker_config, tmp_path, FAST, on_inbound=handler)
    server = paho.Client(CallbackAPIVersion.VERSION2, client_id=new_device_id())
    server.connect(mosquitto.host, mosquitto.port)  # type: ignore[attr-defined]
    server.loop_start()
    try:
        desired = Envelope(Channel.DESIRED, device, 1, 1, 1.0, False, {"model": "m@2"})
        server.publish(topic(device, Channel.DESIRED), encode(desired), qos=1,
                       retain=True).wait_for_publish(5)
        client.start()
        assert got.get(timeout=10) == desired  # retained: arrives on subscribe
        # rejected: wrong device in the envelope, garbage, a device channel as type
        other = Envelope(Channel.CMD, "someone-else", 1, 2, 1.0, False, {})
        server.publish(topic(device, Channel.CMD), encode(other), qos=1).wait_for_publish(5)
        server.publish(topic(device, Channel.CMD), b"\x00garbage", qos=1).wait_for_publish(5)
        wrong = Envelope(Channel.EVENTS, device, 1, 3, 1.0, False, {})
        server.publish(topic(device, Channel.CMD), encode(wrong), qos=1).wait_for_publish(5)
        cmd = Envelope(Channel.CMD, device, 1, 4, 1.0, False, {"op": "reboot",
                                                              "expires": 2e9})
        server.publish(topic(device, Channel.CMD), encode(cmd), qos=1).wait_for_publish(5)
        assert got.get(timeout=10) == cmd
        assert client.stats().inbound_rejected == 3
    finally:
        server.publish(topic(device, Channel.DESIRED), b"", qos=1, retain=True)
        server.disconnect()
        server.loop_stop()
        client.stop()


def test_publish_rejects_bad_input(broker_config: BrokerConfig, tmp_path: Path) -> None:
    client = TelemetryClient(new_device_id(), broker_config, tmp_path, FAST)
    try:
        with pytest.raises(EnvelopeError):
            client.publish(Channel.CMD, {})
        with pytest.raises(EnvelopeError):
            client.publish(Channel.EVENTS, {"x": {1, 2}})  # type: ignore[dict-item]
    finally:
        client.stop()
    with pytest.raises(EnvelopeError):
        TelemetryClient("bad/id", broker_config, tmp_path / "x", FAST)


def test_from_enrollment(tmp_path: Path, mosquitto: object) -> None:
    with pytest.raises(BrokerConfigError, match="not enrolled"):
        TelemetryClient.from_enrollment(tmp_path)
    (tmp_path / "enrollment.json").write_text(json.dumps({
        "device_id": "dev-abc", "broker": {"url": "mqtts://broker.example:8884",
                                           "username": "dev-abc", "password": "pw"}}))
    client = TelemetryClient.from_enrollment(tmp_path, config=FAST)
    try:
        assert client.device_id == "dev-abc"
        b = client.broker
        assert (b.host, b.port, b.tls, b.username, b.password) == (
            "broker.example", 8884, True, "dev-abc", "pw")
        assert "pw" not in repr(b)
    finally:
        client.stop()
    for url in ("http://x", "mqtt://", "mqtt://h:notaport"):
        with pytest.raises(BrokerConfigError):
            BrokerConfig.from_url(url)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, 0.5, 10.0, rng) for n in range(12)]
    for n, d in enumerate(delays):
        cap = min(10.0, 0.5 * 2**n)
        assert cap * 0.5 <= d <= cap
    assert len(set(delays)) == len(delays)  # jittered, not lockstep


def test_evictions_are_reported_in_the_heartbeat(
    collector: Collector, broker_config: BrokerConfig, tmp_path: Path
) -> None:
    device = new_device_id()
    small = TelemetryConfig(heartbeat_s=0.3, backoff_initial_s=0.05,
                            outbox=OutboxConfig(max_bytes=8192, max_payload_bytes=1024))
    client = TelemetryClient(device, broker_config, tmp_path, small)
    seqs = [client.publish(Channel.EVENTS, {"pad": "x" * 500, "i": i}) for i in range(40)]
    dropped = client.stats().outbox.dropped
    assert dropped > 0
    client.start()
    try:
        wait_until(lambda: any(m.envelope.body["outbox"]["depth"] == 0
                               for m in collector.of(device, Channel.HEARTBEAT)),
                   what="a heartbeat after the drain")
        beat = collector.of(device, Channel.HEARTBEAT)[-1].envelope.body
        assert beat["outbox"]["dropped"] == dropped
        got = [m.envelope.seq for m in collector.of(device, Channel.EVENTS)]
        assert got == seqs[dropped:]  # the oldest were evicted, the rest kept their order
    finally:
        client.stop()
