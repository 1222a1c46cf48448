"""The envelope codec: round trips, strict rejection of everything else, topics."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.telemetry import envelope as ev
from edgefleet.agent.telemetry.envelope import Channel, Envelope, EnvelopeError

DEVICE_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
JSON_LEAVES = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON = st.recursive(JSON_LEAVES, lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)
BODIES = st.dictionaries(st.text(max_size=8), JSON, max_size=6)
ENVELOPES = st.builds(
    Envelope,
    type=st.sampled_from(Channel),
    device=DEVICE_IDS,
    bd=st.integers(0, ev.MAX_COUNTER),
    seq=st.integers(0, ev.MAX_COUNTER),
    ts=st.floats(0, 4e9, allow_nan=False),
    historical=st.booleans(),
    body=BODIES,
)


def _valid() -> dict[str, Any]:
    return {"v": 1, "type": "predictions", "device": "dev-1", "bd": 3, "seq": 7,
            "ts": 1700000000.5, "historical": False, "body": {"records": [1, 2]}}


@settings(max_examples=300)
@given(ENVELOPES)
def test_round_trip(envelope: Envelope) -> None:
    decoded = ev.decode(ev.encode(envelope))
    assert decoded.type is envelope.type
    assert (decoded.device, decoded.bd, decoded.seq, decoded.historical) == (
        envelope.device, envelope.bd, envelope.seq, envelope.historical)
    assert decoded.ts == pytest.approx(round(envelope.ts, 6), abs=1e-6)
    assert json.dumps(decoded.body, sort_keys=True) == json.dumps(envelope.body, sort_keys=True)


def test_encode_raw_matches_encode() -> None:
    env = ev.decode(json.dumps(_valid()).encode())
    raw = ev.encode_raw(env.type, env.device, bd=env.bd, seq=env.seq, ts=env.ts,
                        historical=env.historical, body_json=ev.encode_body(env.body))
    assert ev.decode(raw) == env
    assert raw == ev.encode(env)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_rejected(payload: bytes) -> None:
    try:
        ev.decode(payload)
    except EnvelopeError:
        return
    raise AssertionError(f"random bytes decoded: {payload!r}")  # pragma: no cover


BAD_VALUES = {
    "v": [0, 2, "1", 1.0, True, None],
    "type": ["nope", 1, None, "Predictions", ""],
    "device": ["", "-x", "a/b", "a+b", "x" * 65, 5, None, "dev 1", "dév"],
    "bd": [-1, 1.5, "1", True, None, 2**63],
    "seq": [-1, 2.0, "7", False, [], 2**64],
    "ts": [-1.0, "now", None, True, [1]],
    "historical": [0, 1, "false", None],
    "body": [[], "x", 1, None, True],
}


@pytest.mark.parametrize(("key", "value"),
                         [(k, v) for k, vs in BAD_VALUES.items() for v in vs])
def test_bad_field_rejected(key: str, value: Any) -> None:
    data = _valid()
    data[key] = value
    with pytest.raises(EnvelopeError):
        ev.decode(json.dumps(data).encode())


@settings(max_examples=300)
@given(st.sampled_from(sorted(BAD_VALUES)), JSON)
def test_fuzzed_field_values_rejected_or_valid(key: str, value: Any) -> None:
    """Any value in any field either decodes to exactly that value or is rejected."""
    data = _valid()
    data[key] = value
    try:
        env = ev.decode(json.dumps(data).encode())
    except EnvelopeError:
        return
    assert getattr(env, "type" if key == "type" else key) is not None
    if key == "type":
        assert env.type.value == value
    elif key not in ("v", "ts"):
        assert getattr(env, key) == value


@pytest.mark.parametrize("payload", [
    b'{"v":1,"v":1,"type":"events","device":"d","bd":0,"seq":0,"ts":0,"historical":false,'
    b'"body":{}}',
    b'{"v":1,"type":"events","device":"d","bd":0,"seq":0,"ts":NaN,"historical":false,'
    b'"body":{}}',
    b'{"v":1,"type":"events","device":"d","bd":0,"seq":0,"ts":Infinity,"historical":false,'
    b'"body":{}}',
    b"[1,2]",
    b"\xff\xfe",
    b"[" * 100000,
    b"",
])
def test_malformed_payloads_rejected(payload: bytes) -> None:
    with pytest.raises(EnvelopeError):
        ev.decode(payload)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_exact_key_set(change: str) -> None:
    data = _valid()
    if change == "missing":
        del data["historical"]
    else:
        data["extra"] = 1
    with pytest.raises(EnvelopeError, match="keys"):
        ev.decode(json.dumps(data).encode())


def test_size_limits() -> None:
    big = {"x": "a" * 2000}
    with pytest.raises(EnvelopeError, match="exceeds"):
        ev.encode_body(big, max_payload_bytes=1024)
    env = Envelope(Channel.EVENTS, "d", 0, 0, 0.0, False, big)
    payload = ev.encode(env)
    assert ev.decode(payload) == env
    with pytest.raises(EnvelopeError, match="exceeds"):
        ev.decode(payload, max_payload_bytes=len(payload) - 1)
    # the overhead reserve holds for the largest header values
    body = {"x": "a" * (4096 - ev.ENVELOPE_OVERHEAD_BYTES - 8)}
    worst = Envelope(Channel.PREDICTIONS, "d" * 64, ev.MAX_COUNTER, ev.MAX_COUNTER,
                     4102444800.123456, False, body)
    assert len(ev.encode(worst, max_payload_bytes=4096)) <= 4096


def test_body_must_be_json_object() -> None:
    for body in ({"x": float("nan")}, {"x": object()}, {1: {2: 3}.keys()}):
        with pytest.raises(EnvelopeError):
            ev.encode_body(body)  # type: ignore[arg-type]
    with pytest.raises(EnvelopeError):
        ev.encode_body([1, 2])  # type: ignore[arg-type]


def test_expected_device_and_channel() -> None:
    payload = json.dumps(_valid()).encode()
    with pytest.raises(EnvelopeError, match="is not"):
        ev.decode(payload, expected_device="dev-2")
    with pytest.raises(EnvelopeError, match="is not"):
        ev.decode(payload, expected_channel=Channel.EVENTS)
    assert ev.decode(payload, expected_device="dev-1",
                     expected_channel=Channel.PREDICTIONS).seq == 7


def test_topics() -> None:
    assert ev.topic("dev-1", Channel.HEARTBEAT) == "edgefleet/v1/d/dev-1/heartbeat"
    assert ev.parse_topic("edgefleet/v1/d/dev-1/cmd") == ("dev-1", Channel.CMD)
    assert ev.device_filter() == "edgefleet/v1/d/+/+"
    assert ev.device_filter(Channel.DRIFT) == "edgefleet/v1/d/+/drift"
    for bad in ("edgefleet/v1/d/dev-1", "edgefleet/v1/d/dev-1/nope", "edgefleet/v1/d/a/b/c",
                "other/v1/d/dev-1/cmd", "edgefleet/v1/d/+/cmd", "edgefleet/v1/d//cmd"):
        with pytest.raises(EnvelopeError):
            ev.parse_topic(bad)
    for bad_id in ("", "a/b", "#", "+", "x" * 65, ".a"):
        with pytest.raises(EnvelopeError):
            ev.topic(bad_id, Channel.STATUS)


@given(DEVICE_IDS, st.sampled_from(Channel))
def test_topic_round_trip(device: str, channel: Channel) -> None:
    assert ev.parse_topic(ev.topic(device, channel)) == (device, channel)


def test_channel_directions() -> None:
    assert {c for c in Channel if not c.from_device} == {Channel.DESIRED, Channel.CMD}
    assert set(Channel) == ev.DEVICE_CHANNELS | ev.SERVER_CHANNELS
