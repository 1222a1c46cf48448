"""A minimal MQTT 3.1.1 client codec for many connections on one selector (sans-I/O).

This module does no I/O: it builds packets as bytes and splits a received byte stream
into packets. :mod:`.fleet` owns the sockets. Only what a simulated device needs:

* client → broker: CONNECT (username, password, last will, keepalive), PUBLISH QoS 0/1
  (retain flag), PUBACK (for QoS 1 deliveries), SUBSCRIBE, PINGREQ, DISCONNECT;
* broker → client: CONNACK, PUBLISH (QoS 0/1, retained flag), PUBACK, SUBACK, PINGRESP.

QoS 2 is never requested, so a QoS 2 PUBLISH from the broker is a protocol error here.
Why not paho: one paho ``Client`` per device costs a thread (or a hand-driven loop) and
tens of kilobytes per connection; 10,000 of them in one process are not practical, while
these few functions are enough for the device side of the edgefleet contract.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

PROTOCOL_LEVEL = 4  # MQTT 3.1.1
MAX_REMAINING_LENGTH = 268_435_455
MAX_MID = 65535

PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


class MqttProtocolError(Exception):
    """The broker sent bytes that are not a valid MQTT 3.1.1 packet for a client."""


class PacketType(enum.IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnackCode(enum.IntEnum):
    ACCEPTED = 0
    BAD_PROTOCOL = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_CREDENTIALS = 4
    NOT_AUTHORIZED = 5


@dataclass(frozen=True)
class Will:
    """A last will: published by the broker when the connection drops uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Packet:
    """One received packet: its type, the low nibble of the fixed header, the body."""

    type: PacketType
    flags: int
    body: bytes


@dataclass(frozen=True)
class Publish:
    """A decoded PUBLISH. ``mid`` is 0 for QoS 0."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int


def varint(n: int) -> bytes:
    """The MQTT "remaining length" encoding of ``n`` (1-4 bytes)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s: str | bytes) -> bytes:
    """A length-prefixed UTF-8 string (or binary field)."""
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 65535:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str, *, username: str | None = None, password: str | None = None,
            keepalive_s: int = 60, will: Will | None = None, clean: bool = True) -> bytes:
    """CONNECT (MQTT 3.1.1)."""
    if not 0 <= keepalive_s <= 65535:
        raise ValueError("keepalive_s must be in [0, 65535]")
    flags = 0x02 if clean else 0
    payload = string(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += string(will.topic) + string(will.payload)
    if username is not None:
        flags |= 0x80
        payload += string(username)
        if password is not None:
            flags |= 0x40
            payload += string(password)
    header = string("MQTT") + bytes([PROTOCOL_LEVEL, flags]) + struct.pack("!H", keepalive_s)
    return _packet(0x10, header + payload)


def publish(topic: str, payload: bytes, *, qos: int = 0, mid: int = 0,
            retain: bool = False, dup: bool = False) -> bytes:
    """PUBLISH at QoS 0 or 1 (``mid`` required, 1-65535, for QoS 1)."""
    if qos not in (0, 1):
        raise ValueError("only QoS 0 and 1 are supported")
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = string(topic)
    if qos:
        if not 1 <= mid <= MAX_MID:
            raise ValueError("a QoS 1 PUBLISH needs a message id in [1, 65535]")
        body += struct.pack("!H", mid)
    return _packet(first, body + payload)


def puback(mid: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", mid)


def subscribe(mid: int, filters: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE to ``(filter, qos)`` pairs."""
    body = struct.pack("!H", mid) + b"".join(string(f) + bytes([q]) for f, q in filters)
    return _packet(0x82, body)


def parse_connack(packet: Packet) -> tuple[bool, ConnackCode]:
    """``(session_present, return_code)``.

    Raises:
        MqttProtocolError: malformed or unknown return code.
    """
    if len(packet.body) != 2:
        raise MqttProtocolError("CONNACK body must be 2 bytes")
    try:
        code = ConnackCode(packet.body[1])
    except ValueError:
        raise MqttProtocolError(f"unknown CONNACK code {packet.body[1]}") from None
    return bool(packet.body[0] & 1), code


def parse_mid(packet: Packet) -> int:
    """The message id of a PUBACK (or the first two bytes of a SUBACK).

    Raises:
        MqttProtocolError: body too short.
    """
    if len(packet.body) < 2:
        raise MqttProtocolError(f"{packet.type.name} body too short")
    return int(struct.unpack_from("!H", packet.body)[0])


def parse_suback(packet: Packet) -> tuple[int, list[int]]:
    """``(mid, granted QoS per filter; 0x80 means refused)``."""
    return parse_mid(packet), list(packet.body[2:])


def parse_publish(packet: Packet) -> Publish:
    """Decode a PUBLISH received from the broker.

    Raises:
        MqttProtocolError: truncated, QoS 2/3, or a topic that is not UTF-8.
    """
    qos = (packet.flags >> 1) & 0x03
    if qos > 1:
        raise MqttProtocolError(f"QoS {qos} PUBLISH was never subscribed to")
    body = packet.body
    if len(body) < 2:
        raise MqttProtocolError("PUBLISH body too short")
    (length,) = struct.unpack_from("!H", body)
    pos = 2 + length
    if len(body) < pos + (2 if qos else 0):
        raise MqttProtocolError("PUBLISH body too short")
    try:
        name = body[2:pos].decode("utf-8")
    except UnicodeDecodeError:
        raise MqttProtocolError("PUBLISH topic is not UTF-8") from None
    mid = 0
    if qos:
        (mid,) = struct.unpack_from("!H", body, pos)
        pos += 2
    return Publish(name, body[pos:], qos, bool(packet.flags & 0x01), bool(packet.flags & 0x08),
                   mid)


class PacketReader:
    """Splits a byte stream into packets; feed it whatever ``recv`` returned."""

    __slots__ = ("_buf", "max_packet_bytes")

    def __init__(self, max_packet_bytes: int = 1 << 20) -> None:
        self._buf = bytearray()
        self.max_packet_bytes = max_packet_bytes

    def feed(self, data: bytes) -> list[Packet]:
        """Every packet completed by ``data``, in order.

        Raises:
            MqttProtocolError: a malformed length, an unknown or client-only packet
                type, or a packet larger than ``max_packet_bytes``.
        """
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos = 0
        while len(buf) - pos >= 2:
            first = buf[pos]
            length, shift, i, complete = 0, 0, pos + 1, False
            while i < len(buf):
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    raise MqttProtocolError("remaining length longer than 4 bytes")
            if not complete:
                break
            if length > self.max_packet_bytes:
                raise MqttProtocolError(f"packet of {length} bytes exceeds the limit")
            if len(buf) - i < length:
                break
            try:
                kind = PacketType(first >> 4)
            except ValueError:
                raise MqttProtocolError(f"unknown packet type {first >> 4}") from None
            if kind in (PacketType.CONNECT, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE,
                        PacketType.PINGREQ, PacketType.DISCONNECT):
                raise MqttProtocolError(f"a broker never sends {kind.name}")
            out.append(Packet(kind, first & 0x0F, bytes(buf[i:i + length])))
            pos = i + length
        if pos:
            del buf[:pos]
        return out
