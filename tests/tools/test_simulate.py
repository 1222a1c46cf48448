"""The fleet simulator against a real Mosquitto: what it publishes must pass the server's
own envelope and body validation, and it must follow desired hints like an agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.drift import WindowSummary
from edgefleet.agent.telemetry.envelope import (
    Channel,
    Envelope,
    decode,
    encode,
    parse_topic,
    topic,
)
from edgefleet.agent.update.state import UpdateState
from edgefleet.fleet_server.ingest.bodies import validate_body
from edgefleet.tools.simulate import (
    CapacityError,
    DeviceConfig,
    Fleet,
    FleetConfig,
    SimulateConfigError,
    VersionFaults,
    WindowSource,
    default_reference,
    mqtt,
)
from edgefleet.tools.simulate.device import FAIL_WALK, INSTALL_WALK
from edgefleet.tools.simulate.fleet import raise_nofile_limit
from edgefleet.tools.simulate.spec import parse_broker_url, parse_faults

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
DEVICES = 50
MODEL = "iris"
SHIFT = 3.0
REFERENCE = default_reference()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@dataclass
class Recorder:
    """Every message under the simulated devices' subtrees, decoded and validated."""

    messages: list[tuple[str, Channel, Envelope, bool]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            device, channel = parse_topic(msg.topic)
            if not channel.from_device or not msg.payload:
                return
            env = decode(msg.payload, expected_device=device, expected_channel=channel)
            validate_body(channel, env.body,
                          lambda m, v: REFERENCE if m == MODEL else None)
        except Exception as e:  # recorded, asserted empty by the tests
            with self.lock:
                self.invalid.append(f"{msg.topic}: {e!r}")
            return
        with self.lock:
            self.messages.append((device, channel, env, bool(msg.retain)))

    def of(self, device: str, channel: Channel) -> list[Envelope]:
        with self.lock:
            return [e for d, c, e, _ in self.messages if d == device and c is channel]

    def devices(self, channel: Channel) -> set[str]:
        with self.lock:
            return {d for d, c, _, _ in self.messages if c is channel}


@dataclass
class Running:
    fleet: Fleet
    recorder: Recorder
    publisher: paho.Client
    prefix: str
    started_ms: int

    def device(self, i: int) -> str:
        return self.fleet.config.device_id(i)

    def desire(self, i: int, version: str) -> None:
        device = self.device(i)
        body = {"model": MODEL, "version": version, "target": f"{MODEL}-{version}.tar",
                "rollout": 1, "shadow": None}
        payload = encode(Envelope(Channel.DESIRED, device, 1, 1, time.time(), False, body))
        self.publisher.publish(topic(device, Channel.DESIRED), payload, qos=1,
                               retain=True).wait_for_publish(10)


def _client(host: str, port: int, name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:8]}")
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    return client


@pytest.fixture(scope="module")
def running(mosquitto: Any) -> Iterator[Running]:
    prefix = f"sim{uuid.uuid4().hex[:6]}"
    recorder = Recorder()
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{prefix}")
    sub.max_queued_messages_set(0)
    sub.on_message = recorder.on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe("edgefleet/v1/d/+/+", qos=1)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    assert subscribed.wait(10)
    faults = {"2.0": VersionFaults(output_shift=SHIFT, latency_factor=1.8),
              "3.0": VersionFaults(fail_install=True)}
    device = DeviceConfig(model=MODEL, version="1.0", heartbeat_s=0.5, window_s=1.0,
                          install_delay_s=0.3, predictions_per_s=200, faults=faults)
    windows = WindowSource(REFERENCE, lambda v: device.fault(v).output_shift, rows=200)
    started_ms = int(time.time() * 1000)
    fleet = Fleet(FleetConfig(mosquitto.host, mosquitto.port, DEVICES, prefix=prefix,
                              password="any"), device, windows)
    thread = threading.Thread(target=fleet.run, name="fleet", daemon=True)
    thread.start()
    publisher = _client(mosquitto.host, mosquitto.port, "desired")
    run = Running(fleet, recorder, publisher, prefix, started_ms)
    try:
        yield run
    finally:
        fleet.stop()
        thread.join(15)
        for i in range(DEVICES):  # retained hints must not outlive the test
            publisher.publish(topic(run.device(i), Channel.DESIRED), b"", qos=1, retain=True)
        publisher.disconnect()
        publisher.loop_stop()
        sub.disconnect()
        sub.loop_stop()
    assert not thread.is_alive()


def test_every_device_connects_and_reports(running: Running) -> None:
    rec = running.recorder
    everyone = {running.device(i) for i in range(DEVICES)}
    for channel in (Channel.BIRTH, Channel.STATUS, Channel.HEARTBEAT, Channel.DRIFT):
        wait_for(lambda channel=channel: rec.devices(channel) >= everyone)
    assert rec.invalid == []
    assert running.fleet.stats().connected == DEVICES

    device = running.device(7)
    birth = rec.of(device, Channel.BIRTH)[0].body
    assert birth["models"] == {MODEL: "1.0"}
    status = rec.of(device, Channel.STATUS)[0]
    assert status.body == {"state": "online"}
    retained = _retained(running, topic(device, Channel.STATUS))
    assert retained is not None and decode(retained).body == {"state": "online"}
    beat = rec.of(device, Channel.HEARTBEAT)[-1].body["models"][MODEL]
    assert beat["version"] == "1.0"
    assert set(beat) >= {"predictions", "errors", "sampled", "latency_ms", "feedback"}
    assert set(beat["feedback"]) == {"labeled", "correct"}
    window = rec.of(device, Channel.DRIFT)[0]
    assert window.body["version"] == "1.0"
    # envelopes number every message: seq strictly increasing (and from the clock, so a
    # later run of the same ids is not taken for replays by the server)
    with rec.lock:
        seqs = [e.seq for d, _, e, _ in rec.messages if d == device]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs[0] > running.started_ms - 60_000


def _retained(running: Running, name: str) -> bytes | None:
    """The retained message on ``name`` as a new subscriber sees it."""
    got: list[bytes] = []
    host, port = running.fleet.config.host, running.fleet.config.port
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ret-{uuid.uuid4().hex[:8]}")
    sub.on_message = lambda c, u, m: got.append(m.payload) if m.retain else None
    sub.on_connect = lambda c, *a: c.subscribe(name, qos=1)
    sub.connect(host, port)
    sub.loop_start()
    try:
        wait_for(lambda: bool(got), 5)
    except AssertionError:
        return None
    finally:
        sub.disconnect()
        sub.loop_stop()
    return got[0]


def _walk(envelopes: list[Envelope]) -> list[tuple[str, str, str | None]]:
    return [(e["from"], e["to"], e["error"]) for env in envelopes for e in env.body["events"]]


def _output_mean_shift(env: Envelope) -> float:
    summary = WindowSummary.from_dict(env.body["summary"], REFERENCE)
    ref = REFERENCE.outputs[0].stats.moments
    return (summary.outputs[0].moments.mean - ref.mean) / float(np.sqrt(ref.variance))


def test_desired_hint_walks_the_update_and_switches_version(running: Running) -> None:
    rec, fleet = running.recorder, running.fleet
    device = running.device(3)
    wait_for(lambda: rec.of(device, Channel.HEARTBEAT) != [])
    running.desire(3, "2.0")
    wait_for(lambda: any(e.body["models"][MODEL]["version"] == "2.0"
                         for e in rec.of(device, Channel.HEARTBEAT)))
    walk = _walk(rec.of(device, Channel.EVENTS))
    assert walk == [(a.value, b.value, None) for a, b in INSTALL_WALK]
    assert walk[-1][1] == UpdateState.COMMITTED.value
    assert {e["bundle"] for env in rec.of(device, Channel.EVENTS) for e in env.body["events"]} \
        == {f"{MODEL}-2.0.tar"}
    assert fleet.devices[3].version == "2.0"

    wait_for(lambda: any(e.body["version"] == "2.0" for e in rec.of(device, Channel.DRIFT)))
    windows = rec.of(device, Channel.DRIFT)
    old = [_output_mean_shift(e) for e in windows if e.body["version"] == "1.0"]
    new = [_output_mean_shift(e) for e in windows if e.body["version"] == "2.0"]
    assert old and new
    assert max(abs(s) for s in old) < 0.5
    assert min(new) > SHIFT - 0.5
    latest = [e.body["models"][MODEL] for e in rec.of(device, Channel.HEARTBEAT)]
    assert latest[-1]["latency_ms"]["p95"] > latest[0]["latency_ms"]["p95"]
    # other devices did not move
    assert fleet.devices[2].version == "1.0"
    assert rec.of(running.device(2), Channel.EVENTS) == []
    assert rec.invalid == []


def test_failing_version_reports_the_error_and_rolls_back(running: Running) -> None:
    rec, fleet = running.recorder, running.fleet
    device = running.device(4)
    wait_for(lambda: rec.of(device, Channel.HEARTBEAT) != [])
    running.desire(4, "3.0")
    wait_for(lambda: fleet.devices[4].failures == 1)
    wait_for(lambda: len(_walk(rec.of(device, Channel.EVENTS))) == len(FAIL_WALK))
    walk = _walk(rec.of(device, Channel.EVENTS))
    assert [(f, t) for f, t, _ in walk] == [(a.value, b.value) for a, b in FAIL_WALK]
    errors = [(f, t, err) for f, t, err in walk if err is not None]
    assert len(errors) == 1
    assert errors[0][:2] == ("warming", "rolling_back")
    assert walk[-1][1] == "idle"
    assert fleet.devices[4].version == "1.0"
    count = len(rec.of(device, Channel.HEARTBEAT))
    wait_for(lambda: len(rec.of(device, Channel.HEARTBEAT)) > count + 1)
    assert rec.of(device, Channel.HEARTBEAT)[-1].body["models"][MODEL]["version"] == "1.0"
    assert fleet.devices[4].install is None  # the same hint is not retried forever
    assert rec.invalid == []


# -- the codec ----------------------------------------------------------------------------


def test_packet_reader_splits_any_chunking() -> None:
    packets = (mqtt.publish("a/b", b"x" * 300, qos=1, mid=7, retain=True)
               + b"\x40\x02\x00\x07" + b"\xd0\x00"
               + mqtt.publish("c", b"", qos=0))
    for size in (1, 2, 3, 7, len(packets)):
        reader = mqtt.PacketReader()
        got: list[mqtt.Packet] = []
        for i in range(0, len(packets), size):
            got.extend(reader.feed(packets[i:i + size]))
        assert [p.type for p in got] == [mqtt.PacketType.PUBLISH, mqtt.PacketType.PUBACK,
                                         mqtt.PacketType.PINGRESP, mqtt.PacketType.PUBLISH]
        first = mqtt.parse_publish(got[0])
        assert (first.topic, first.payload, first.qos, first.mid, first.retain) == \
            ("a/b", b"x" * 300, 1, 7, True)
        assert mqtt.parse_mid(got[1]) == 7
        assert mqtt.parse_publish(got[3]).mid == 0


def test_packet_reader_rejects_what_a_broker_never_sends() -> None:
    with pytest.raises(mqtt.MqttProtocolError):
        mqtt.PacketReader().feed(mqtt.PINGREQ)
    with pytest.raises(mqtt.MqttProtocolError):
        mqtt.PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(mqtt.MqttProtocolError):
        mqtt.parse_publish(mqtt.PacketReader().feed(b"\x34\x05\x00\x01a\x00\x01")[0])


def test_connect_packet_fields() -> None:
    packet = mqtt.connect("dev-1", username="dev-1", password="pw", keepalive_s=60,
                          will=mqtt.Will("t/status", b"off", qos=1, retain=True))
    assert packet[0] == 0x10
    flags = packet[2 + 6 + 1]  # fixed header, "MQTT" string, level
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    assert packet.endswith(b"\x00\x05dev-1\x00\x02pw")


# -- specs and limits ---------------------------------------------------------------------


def test_fault_specs() -> None:
    faults = parse_faults(["2.0:shift=1.5", "4.0"], ["3.0"], ["2.0:1.8"])
    assert faults["2.0"] == VersionFaults(output_shift=1.5, latency_factor=1.8)
    assert faults["4.0"].output_shift == 2.0
    assert faults["3.0"].fail_install
    for bad in (dict(bad=["2.0:shift=x"]), dict(bad=["2.0:scale=2"]),
                dict(latency=["2.0"]), dict(latency=["2.0:-1"]), dict(fail=[""])):
        with pytest.raises(SimulateConfigError):
            parse_faults(**bad)
    assert parse_broker_url("mqtt://127.0.0.1:1999") == ("127.0.0.1", 1999)
    with pytest.raises(SimulateConfigError):
        parse_broker_url("mqtts://host:8883")


def test_too_many_connections_fail_clearly() -> None:
    with pytest.raises(CapacityError, match="RLIMIT_NOFILE"):
        raise_nofile_limit(10**9)


# -- the command --------------------------------------------------------------------------


def test_cli_runs_and_stops_cleanly_on_sigterm(mosquitto: Any, tmp_path: Path) -> None:
    prefix = f"cli{uuid.uuid4().hex[:6]}"
    passwords = tmp_path / "passwords.json"
    ids = [f"{prefix}-dev{i}" for i in range(5)]  # as the server assigns them
    passwords.write_text(json.dumps({d: f"pw-{d}" for d in ids}))
    proc = subprocess.Popen(
        [str(EDGEFLEET), "simulate", "--broker", mosquitto.url, "--devices", "5",
         "--prefix", prefix, "--model", MODEL, "--version", "1.0", "--password-file",
         str(passwords), "--ids-from-passwords", "--heartbeat-s", "0.5", "--window-s", "1",
         "--progress-s", "0.5",
         "--bad-version", "2.0:shift=2", "--fail-version", "3.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "connected 5/5" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "5 MQTT connections" in lines[0] and "selectors" in lines[0]
    assert "5 devices, 5 connects" in out

    statuses: dict[str, bytes] = {}
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"chk-{prefix}")
    sub.on_message = lambda c, u, m: statuses.__setitem__(m.topic, m.payload)
    sub.on_connect = lambda c, *a: c.subscribe(
        [(topic(d, Channel.STATUS), 1) for d in ids])
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    try:
        wait_for(lambda: len(statuses) == 5)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert {decode(p).body["state"] for p in statuses.values()} == {"offline"}


def test_cli_help_and_bad_input() -> None:
    from click.testing import CliRunner

    from edgefleet.tools.cli import cli

    result = CliRunner().invoke(cli, ["simulate", "--help"])
    assert result.exit_code == 0 and "--fail-version" in result.output
    result = CliRunner().invoke(cli, [
        "simulate", "--broker", "mqtt://127.0.0.1:1", "--devices", "1", "--model", MODEL,
        "--version", "1.0", "--latency-factor", "2.0"])
    assert result.exit_code != 0
    assert "--latency-factor" in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)
