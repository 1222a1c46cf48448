"""The versioned JSON envelope and topic names of the MQTT contract (pure, stdlib only).

Every payload on ``edgefleet/v1/d/{device_id}/{channel}`` is one JSON object with
exactly these keys::

    {"v": 1, "type": "<channel>", "device": "<device id>", "bd": <int>, "seq": <int>,
     "ts": <unix seconds>, "historical": <bool>, "body": {...}}

``bd`` counts the device's broker connects, ``seq`` numbers its messages (monotonic
across restarts), so the receiver deduplicates on ``(device, bd, seq)`` and counts gaps;
``historical`` marks outbox replays after a reconnect.

This module does no I/O and imports nothing outside the standard library: the fleet
server's ingestion validates with the same code the device encodes with.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edgefleet.agent.telemetry.errors import EnvelopeError

PROTOCOL_VERSION = 1
TOPIC_ROOT = "edgefleet/v1"
DEVICE_TOPIC_ROOT = f"{TOPIC_ROOT}/d"
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
# Worst case bytes the envelope adds around an encoded body (64-char device id, 20-digit
# integers, a ts with decimals, the longest channel name): a body of at most
# max_payload_bytes - ENVELOPE_OVERHEAD_BYTES always fits.
ENVELOPE_OVERHEAD_BYTES = 256
MAX_COUNTER = 2**63 - 1  # bd and seq fit a signed 64-bit SQL integer

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEYS = frozenset({"v", "type", "device", "bd", "seq", "ts", "historical", "body"})


class Channel(Enum):
    """The closed set of topic channels under a device's subtree."""

    BIRTH = "birth"
    STATUS = "status"
    HEARTBEAT = "heartbeat"
    PREDICTIONS = "predictions"
    DRIFT = "drift"
    EVENTS = "events"
    DESIRED = "desired"
    CMD = "cmd"

    @property
    def from_device(self) -> bool:
        """True for device → server channels, False for ``desired`` and ``cmd``."""
        return self not in _SERVER_CHANNELS


_CHANNELS = {c.value: c for c in Channel}  # faster than Channel(value) per message
_SERVER_CHANNELS = frozenset({Channel.DESIRED, Channel.CMD})
DEVICE_CHANNELS = frozenset(c for c in Channel if c not in _SERVER_CHANNELS)
SERVER_CHANNELS = _SERVER_CHANNELS


class Status(Enum):
    """Values of the ``state`` field in a ``status`` body."""

    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Envelope:
    """One decoded, validated message (``ts`` in unix seconds, ``body`` a JSON object)."""

    type: Channel
    device: str
    bd: int
    seq: int
    ts: float
    historical: bool
    body: Mapping[str, Any]
    v: int = PROTOCOL_VERSION


def is_valid_device_id(device_id: object) -> bool:
    """True when ``device_id`` is safe as one topic level and as a broker username."""
    return isinstance(device_id, str) and _DEVICE_ID_RE.fullmatch(device_id) is not None


def validate_device_id(device_id: object) -> str:
    """Return ``device_id`` unchanged if valid (1-64 of ``[A-Za-z0-9._-]``, alnum first).

    Raises:
        EnvelopeError: the id is not a valid device id.
    """
    if not is_valid_device_id(device_id):
        raise EnvelopeError(f"invalid device id {device_id!r}")
    assert isinstance(device_id, str)
    return device_id


def topic(device_id: str, channel: Channel) -> str:
    """``edgefleet/v1/d/{device_id}/{channel}``.

    Raises:
        EnvelopeError: invalid device id.
    """
    return f"{DEVICE_TOPIC_ROOT}/{validate_device_id(device_id)}/{channel.value}"


def device_filter(channel: Channel | None = None) -> str:
    """A subscription filter for every device: one channel, or all (``+``) of them."""
    return f"{DEVICE_TOPIC_ROOT}/+/{channel.value if channel else '+'}"


def parse_topic(name: str) -> tuple[str, Channel]:
    """Split a device topic into ``(device_id, channel)``.

    Raises:
        EnvelopeError: not a topic of the contract.
    """
    prefix = DEVICE_TOPIC_ROOT + "/"
    if not isinstance(name, str) or not name.startswith(prefix):
        raise EnvelopeError(f"not an edgefleet device topic: {name!r}")
    parts = name[len(prefix):].split("/")
    if len(parts) != 2:
        raise EnvelopeError(f"not an edgefleet device topic: {name!r}")
    channel = _CHANNELS.get(parts[1])
    if channel is None:
        raise EnvelopeError(f"unknown channel in topic {name!r}")
    return validate_device_id(parts[0]), channel


def encode_body(body: Mapping[str, Any], max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> str:
    """Compact JSON of a body that is guaranteed to fit in an envelope of the given size.

    Raises:
        EnvelopeError: not a JSON object of finite numbers and string keys, or too large.
    """
    if not isinstance(body, Mapping):
        raise EnvelopeError(f"body must be a JSON object, not {type(body).__name__}")
    try:
        text = _ENCODER.encode(body)
    except (TypeError, ValueError, RecursionError) as e:
        raise EnvelopeError(f"body is not valid JSON: {e}") from e
    limit = max_payload_bytes - ENVELOPE_OVERHEAD_BYTES
    size = len(text.encode("utf-8"))
    if size > limit:
        raise EnvelopeError(f"body of {size} bytes exceeds the {limit}-byte limit")
    return text


def encode_raw(
    channel: Channel,
    device: str,
    *,
    bd: int,
    seq: int,
    ts: float,
    historical: bool,
    body_json: str,
) -> bytes:
    """Build the payload around a body already produced by :func:`encode_body`.

    The hot send path uses this to avoid re-serializing large bodies; fields are
    validated, the body text is trusted (it came from :func:`encode_body`).

    Raises:
        EnvelopeError: a header field is invalid.
    """
    if type(ts) is int:
        ts = float(ts)
    _check_header(channel, device, bd=bd, seq=seq, ts=ts, historical=historical)
    # Formatted by hand (this is the per-message send path): every field was validated
    # above, a valid device id needs no JSON escaping, and repr() of a finite float is
    # valid JSON.
    return (
        f'{{"v":{PROTOCOL_VERSION},"type":"{channel.value}","device":"{device}","bd":{bd},'
        f'"seq":{seq},"ts":{round(ts, 6)!r},"historical":{"true" if historical else "false"},'
        f'"body":{body_json}}}'
    ).encode()


def encode(envelope: Envelope, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """The wire bytes of ``envelope``.

    Raises:
        EnvelopeError: a field is invalid or the payload would exceed the limit.
    """
    if envelope.v != PROTOCOL_VERSION:
        raise EnvelopeError(f"unsupported envelope version {envelope.v!r}")
    body_json = encode_body(envelope.body, max_payload_bytes)
    return encode_raw(envelope.type, envelope.device, bd=envelope.bd, seq=envelope.seq,
                      ts=envelope.ts, historical=envelope.historical, body_json=body_json)


def decode(
    payload: bytes,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    expected_device: str | None = None,
    expected_channel: Channel | None = None,
) -> Envelope:
    """Parse and strictly validate one payload.

    Rejects: oversized payloads, invalid UTF-8 or JSON, NaN/Infinity, duplicate keys,
    missing or extra keys, wrong types (``bool`` is not an integer here), negative or
    out-of-range counters, unknown versions and channels, and (when given) a device or
    channel other than the one the topic names.

    Raises:
        EnvelopeError: any of the above.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise EnvelopeError(f"payload must be bytes, not {type(payload).__name__}")
    if len(payload) > max_payload_bytes:
        raise EnvelopeError(f"payload of {len(payload)} bytes exceeds {max_payload_bytes}")
    try:
        data = _DECODER.decode(bytes(payload).decode("utf-8"))
    except EnvelopeError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise EnvelopeError(f"payload is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise EnvelopeError("payload is not a JSON object")
    if data.keys() != _KEYS:
        missing, extra = sorted(_KEYS - set(data)), sorted(set(data) - _KEYS)
        raise EnvelopeError(f"envelope keys wrong (missing {missing}, unexpected {extra})")
    if type(data["v"]) is not int or data["v"] != PROTOCOL_VERSION:
        raise EnvelopeError(f"unsupported envelope version {data['v']!r}")
    kind = data["type"]
    channel = _CHANNELS.get(kind) if type(kind) is str else None
    if channel is None:
        raise EnvelopeError(f"unknown channel {kind!r}")
    ts = data["ts"]
    if type(ts) is int:
        ts = float(ts)
    _check_header(channel, data["device"], bd=data["bd"], seq=data["seq"], ts=ts,
                  historical=data["historical"])
    if not isinstance(data["body"], dict):
        raise EnvelopeError("body must be a JSON object")
    if expected_device is not None and data["device"] != expected_device:
        raise EnvelopeError(f"envelope device {data['device']!r} is not {expected_device!r}")
    if expected_channel is not None and channel is not expected_channel:
        raise EnvelopeError(f"envelope type {channel.value!r} is not {expected_channel.value!r}")
    return Envelope(type=channel, device=data["device"], bd=data["bd"], seq=data["seq"],
                    ts=ts, historical=data["historical"], body=data["body"])


def _check_header(channel: object, device: object, *, bd: object, seq: object, ts: object,
                  historical: object) -> None:
    if not isinstance(channel, Channel):
        raise EnvelopeError(f"type must be a Channel, not {channel!r}")
    validate_device_id(device)
    for name, value in (("bd", bd), ("seq", seq)):
        if type(value) is not int or not 0 <= value <= MAX_COUNTER:
            raise EnvelopeError(f"{name} must be an integer in [0, 2^63), not {value!r}")
    if type(ts) is not float or not math.isfinite(ts) or ts < 0:
        raise EnvelopeError(f"ts must be finite non-negative unix seconds, not {ts!r}")
    if type(historical) is not bool:
        raise EnvelopeError(f"historical must be a boolean, not {historical!r}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # C speed; a duplicate key shows as a shorter dict
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise EnvelopeError(f"duplicate key {key!r}")
            seen.add(key)
    return out


def _no_constants(name: str) -> None:
    raise EnvelopeError(f"{name} is not valid JSON")


# One decoder and one encoder for every payload (json.loads / json.dumps with options
# build a new one per call).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
