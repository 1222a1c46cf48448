"""Helpers of the telemetry tests: a restartable Mosquitto, a collecting subscriber.

``RestartableMosquitto`` runs with persistence on so that a subscriber's
clean_session=False session (and its queued QoS 1 messages) survives a broker stop/start
on the same port. ``Collector`` is a real paho subscriber that records every envelope it
receives on ``edgefleet/v1/d/+/+``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.telemetry.envelope import Channel, Envelope, decode, device_filter
from tests.conftest import find_mosquitto, free_port, wait_for_port


class RestartableMosquitto:
    """A Mosquitto on a fixed free port that the test can stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 0",
            "persistence true",
            f"persistence_location {workdir}/",
            f"log_dest file {workdir / 'mosquitto.log'}",
            # as root Mosquitto drops to user "mosquitto", which cannot write the
            # persistence file into pytest's private tmp dir
            *(["user root"] if os.geteuid() == 0 else []),
            "",
        ]))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.host, self.port)

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file and exits."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@dataclass
class Received:
    topic: str
    envelope: Envelope
    retain: bool


@dataclass
class Collector:
    """A subscriber to every device topic; keeps decoded envelopes in arrival order."""

    host: str
    port: int
    persistent: bool = False
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    invalid: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"collector-{uuid.uuid4().hex[:8]}",
                                  clean_session=not self.persistent)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: object,
                    props: object) -> None:
        client.subscribe(device_filter(), qos=1)

    def _on_subscribe(self, *args: object) -> None:
        self.subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            env = decode(msg.payload)
        except Exception as e:  # recorded, asserted empty by the tests
            self.invalid.append(f"{msg.topic}: {e}")
            return
        with self.lock:
            self.messages.append(Received(msg.topic, env, bool(msg.retain)))

    def start(self) -> Collector:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector did not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def of(self, device: str, channel: Channel | None = None) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.envelope.device == device
                    and (channel is None or m.envelope.type is channel)]

    def unique(self, device: str, channel: Channel) -> dict[tuple[int, int], Envelope]:
        """First arrival per (bd, seq): what a deduplicating server would store."""
        out: dict[tuple[int, int], Envelope] = {}
        for m in self.of(device, channel):
            out.setdefault((m.envelope.bd, m.envelope.seq), m.envelope)
        return out


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def new_device_id() -> str:
    return f"dev-{uuid.uuid4().hex[:12]}"
