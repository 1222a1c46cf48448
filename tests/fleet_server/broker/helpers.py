"""Real MQTT clients for the broker tests: paho-mqtt 2.x and a raw-socket client.

Waits use events with generous timeouts (a safety net against hangs, never a timing
assertion). Negative checks ("B never receives X") use a barrier: a permitted marker
sent after X on the same connection; once the marker arrived, X would have too.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.fleet_server.broker import acl

WAIT_S = 10.0
SERVER_USER = "edgefleet-server"
PASSWORDS = {SERVER_USER: "server-secret", "dev-a": "secret-a", "dev-b": "secret-b"}


class DictAuth:
    """A complete BrokerAuth over an in-memory password table and the real acl module
    (the production one reads the devices table; the topic policy is the same)."""

    def __init__(self, passwords: dict[str, str], server_user: str = SERVER_USER) -> None:
        self._passwords = dict(passwords)
        self._lock = threading.Lock()
        self.server_user = server_user

    def revoke(self, username: str) -> None:
        with self._lock:
            self._passwords.pop(username, None)

    def grant(self, username: str, password: str) -> None:
        with self._lock:
            self._passwords[username] = password

    def authenticate(self, username: str, password: str) -> bool:
        with self._lock:
            expected = self._passwords.get(username)
        return expected is not None and expected == password

    def may_publish(self, username: str, topic: str) -> bool:
        return acl.may_publish(username, topic, server_user=self.server_user)

    def may_subscribe(self, username: str, topic: str) -> bool:
        return acl.may_subscribe(username, topic, server_user=self.server_user)


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class ConnectRefused(AssertionError):
    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"CONNECT refused: {reason}")
        self.reason = reason


class Client:
    """A paho-mqtt 2.x client (VERSION2 callbacks, MQTT 3.1.1) with blocking helpers."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None = None,
        *,
        client_id: str = "",
        clean_session: bool = True,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        self.port = port
        self.messages: queue.Queue[Received] = queue.Queue()
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._suback_event = threading.Condition()
        self.connect_reason: ReasonCode | None = None
        self.session_present = False
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        self.paho.max_inflight_messages_set(1000)
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.paho.will_set(topic, payload, qos=qos, retain=retain)
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe

    # paho callbacks (network thread): never raise, only record.
    def _on_connect(
        self, _c: object, _u: object, flags: mqtt.ConnectFlags, reason: ReasonCode, _p: object
    ) -> None:
        self.session_present = flags.session_present
        self.connect_reason = reason
        self._connected.set()

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, _reason: ReasonCode, _p: object
    ) -> None:
        self._disconnected.set()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put(
            Received(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        )

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        with self._suback_event:
            self._subacks[mid] = list(codes)
            self._suback_event.notify_all()

    def connect(self) -> Client:
        """Connect and wait for CONNACK; raises ConnectRefused when refused."""
        self.paho.connect("127.0.0.1", self.port, keepalive=30)
        self.paho.loop_start()
        assert self._connected.wait(WAIT_S), "no CONNACK"
        assert self.connect_reason is not None
        if self.connect_reason.is_failure:
            self.paho.loop_stop()
            raise ConnectRefused(self.connect_reason)
        return self

    def subscribe(self, topic_filter: str, qos: int = 1) -> bool:
        """Subscribe; True when granted, False when the broker refused (SUBACK 0x80)."""
        result, mid = self.paho.subscribe(topic_filter, qos=qos)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        with self._suback_event:
            assert self._suback_event.wait_for(lambda: mid in self._subacks, WAIT_S), "no SUBACK"
            codes = self._subacks.pop(mid)
        return not codes[0].is_failure

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), f"no PUBACK for {topic}"

    def publish_all(self, messages: Iterable[tuple[str, bytes]], qos: int = 1) -> None:
        """Publish without waiting in between, then wait until every one is acknowledged."""
        infos = [self.paho.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), "a QoS 1 publish was never acknowledged"

    def next_message(self) -> Received:
        return self.messages.get(timeout=WAIT_S)

    def until(self, topic: str, payload: bytes | None = None) -> list[Received]:
        """Every message before (and including) the first one on ``topic``/``payload``."""
        seen: list[Received] = []
        while True:
            message = self.next_message()
            seen.append(message)
            if message.topic == topic and (payload is None or message.payload == payload):
                return seen

    def wait_disconnected(self) -> bool:
        return self._disconnected.wait(WAIT_S)

    def close(self) -> None:
        if self.paho.is_connected():
            self.paho.disconnect()
        self.paho.loop_stop()


ClientFactory = Callable[..., Client]


# -- a raw MQTT 3.1.1 client: for abrupt disconnects and for clients that stop reading --


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    username: str,
    password: str,
    will: tuple[str, bytes, int, bool] | None = None,
) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    payload = _string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _string(topic) + _string(message)
    payload += _string(username) + _string(password)
    header = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
    return _packet(0x10, header + payload)


def subscribe_packet(packet_id: int, filters: Iterable[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id)
    for topic_filter, qos in filters:
        body += _string(topic_filter) + bytes([qos])
    return _packet(0x82, body)


class RawClient:
    """A bare TCP MQTT client: it can vanish without DISCONNECT or stop reading."""

    def __init__(self, port: int, *, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(("127.0.0.1", port))

    def _read_exact(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "connection closed by the broker"
            data += chunk
        return data

    def read_packet(self) -> tuple[int, bytes]:
        first = self._read_exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._read_exact(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._read_exact(length)

    def connect(
        self,
        client_id: str,
        username: str,
        password: str,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> int:
        """Send CONNECT, return the CONNACK return code (0 = accepted)."""
        self.sock.sendall(connect_packet(client_id, username, password, will))
        kind, body = self.read_packet()
        assert kind == 0x20, f"expected CONNACK, got {kind:#x}"
        return body[1]

    def subscribe(self, topic_filter: str, qos: int = 0) -> int:
        """Send SUBSCRIBE, return the granted QoS or 0x80."""
        self.sock.sendall(subscribe_packet(1, [(topic_filter, qos)]))
        kind, body = self.read_packet()
        assert kind == 0x90, f"expected SUBACK, got {kind:#x}"
        return body[2]

    def vanish(self) -> None:
        """Drop the TCP connection without DISCONNECT (as a crashed device would)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()
