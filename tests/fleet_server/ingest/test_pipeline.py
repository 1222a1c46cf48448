"""Pure ingestion logic: classification of messages and per-device dedup / gaps."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.agent.telemetry.envelope import Channel, topic
from edgefleet.fleet_server.ingest import bodies
from edgefleet.fleet_server.ingest.pipeline import (
    MAX_HOLES,
    Accepted,
    Ignored,
    Reason,
    Rejected,
    SeqState,
    classify,
)
from tests.fleet_server.ingest.support import (
    BIRTH,
    HEARTBEAT,
    MODEL,
    VERSION,
    envelope,
    lookup_for,
    reference_profile,
    window_summary,
)

PROFILE = reference_profile()
LOOKUP = lookup_for(PROFILE)
DEV = "dev-1"


def run(channel: Channel, body: dict[str, Any], device: str = DEV) -> object:
    return classify(topic(DEV, channel), envelope(channel, device, body), LOOKUP)


def reason(outcome: object) -> Reason:
    assert isinstance(outcome, Rejected), outcome
    return outcome.reason


def test_valid_messages_of_every_channel_are_accepted() -> None:
    summary = window_summary(PROFILE).to_dict()
    cases: dict[Channel, dict[str, Any]] = {
        Channel.BIRTH: BIRTH,
        Channel.STATUS: {"state": "offline"},
        Channel.HEARTBEAT: HEARTBEAT,
        Channel.PREDICTIONS: {"model": MODEL, "version": VERSION,
                              "records": [{"ts": 1.0, "y": [0.3]}, {"y": [0.9]}]},
        Channel.DRIFT: {"model": MODEL, "version": VERSION, "summary": summary},
        Channel.EVENTS: {"events": [{"ts": 5.0, "kind": "state", "state": "fetching"}]},
    }
    for channel, body in cases.items():
        out = run(channel, body)
        assert isinstance(out, Accepted), (channel, out)
        assert out.envelope.device == DEV
    hb = run(Channel.HEARTBEAT, HEARTBEAT)
    assert isinstance(hb, Accepted) and isinstance(hb.body, bodies.Heartbeat)
    assert hb.body.latency == (bodies.ModelLatency(MODEL, 42, 0.8, 2.1),)
    drift = run(Channel.DRIFT, cases[Channel.DRIFT])
    assert isinstance(drift, Accepted) and isinstance(drift.body, bodies.Drift)
    assert drift.body.summary.predictions == 500


def test_topic_direction_size_device_and_channel_checks() -> None:
    payload = envelope(Channel.HEARTBEAT, DEV, HEARTBEAT)
    assert reason(classify("edgefleet/v1/d/dev-1", payload, LOOKUP)) is Reason.TOPIC
    assert reason(classify("edgefleet/v1/d/-x/heartbeat", payload, LOOKUP)) is Reason.TOPIC
    assert reason(classify("edgefleet/v1/d/dev-1/nope", payload, LOOKUP)) is Reason.TOPIC
    assert reason(classify("other/dev-1/heartbeat", payload, LOOKUP)) is Reason.TOPIC
    assert isinstance(classify(topic(DEV, Channel.DESIRED), payload, LOOKUP), Ignored)
    assert reason(classify(topic(DEV, Channel.HEARTBEAT), payload, LOOKUP,
                           max_payload_bytes=len(payload) - 1)) is Reason.OVERSIZED
    assert reason(run(Channel.HEARTBEAT, HEARTBEAT, device="dev-2")) is Reason.WRONG_DEVICE
    wrong_type = envelope(Channel.STATUS, DEV, {"state": "online"})
    assert reason(classify(topic(DEV, Channel.HEARTBEAT), wrong_type, LOOKUP)) \
        is Reason.WRONG_CHANNEL
    for bad in (b"", b"{", b"\xff\xfe", b"[]", b'{"v": 1}', b"null",
                payload.replace(b'"v":1', b'"v":2'), payload.replace(b'"seq":1', b'"seq":-1'),
                payload.replace(b'"historical":false', b'"historical":0')):
        assert reason(classify(topic(DEV, Channel.HEARTBEAT), bad, LOOKUP)) is Reason.ENVELOPE


@pytest.mark.parametrize(("channel", "body"), [
    (Channel.BIRTH, {"models": {}}),
    (Channel.BIRTH, {"agent_version": "1", "models": {"m": 3}}),
    (Channel.BIRTH, {"agent_version": "1", "models": {}, "hardware": []}),
    (Channel.STATUS, {"state": "maybe"}),
    (Channel.STATUS, {}),
    (Channel.HEARTBEAT, {}),
    (Channel.HEARTBEAT, {"uptime_s": -1}),
    (Channel.HEARTBEAT, {"uptime_s": True}),
    (Channel.HEARTBEAT, {"uptime_s": 1, "outbox": {"depth": 1.5}}),
    (Channel.HEARTBEAT, {"uptime_s": 1, "models": {"m": {"latency_ms": {"p50": "x"}}}}),
    (Channel.HEARTBEAT, {"uptime_s": 1, "models": {"m": {"predictions": -3}}}),
    (Channel.PREDICTIONS, {"model": MODEL, "records": []}),
    (Channel.PREDICTIONS, {"model": MODEL, "records": [1]}),
    (Channel.PREDICTIONS, {"model": "", "records": [{}]}),
    (Channel.PREDICTIONS, {"model": MODEL, "records": [{"ts": "now"}]}),
    (Channel.DRIFT, {"model": MODEL, "version": VERSION}),
    (Channel.DRIFT, {"model": MODEL, "version": VERSION, "summary": {"v": 1}}),
    (Channel.EVENTS, {"events": []}),
    (Channel.EVENTS, {"events": [{"kind": "state"}]}),
])
def test_malformed_bodies_are_rejected(channel: Channel, body: dict[str, Any]) -> None:
    assert reason(run(channel, body)) is Reason.BODY


def test_drift_checked_against_the_versions_reference() -> None:
    summary = window_summary(PROFILE).to_dict()
    unknown = run(Channel.DRIFT, {"model": MODEL, "version": "9.9.9", "summary": summary})
    assert reason(unknown) is Reason.UNKNOWN_VERSION
    other = window_summary(reference_profile(seed=5)).to_dict()  # other bin edges
    assert reason(run(Channel.DRIFT, {"model": MODEL, "version": VERSION,
                                      "summary": other})) is Reason.BODY
    tampered = json.loads(json.dumps(summary))
    tampered["features"][0]["c"][0] += 1  # columns disagree on the row count
    assert reason(run(Channel.DRIFT, {"model": MODEL, "version": VERSION,
                                      "summary": tampered})) is Reason.BODY


def test_a_raising_lookup_is_an_internal_rejection_not_a_crash() -> None:
    def broken(model: str, version: str) -> None:
        raise RuntimeError("registry down")

    payload = envelope(Channel.DRIFT, DEV, {"model": MODEL, "version": VERSION,
                                            "summary": window_summary(PROFILE).to_dict()})
    assert reason(classify(topic(DEV, Channel.DRIFT), payload, broken)) is Reason.INTERNAL


@settings(max_examples=300, deadline=None, database=None)
@given(payload=st.binary(max_size=512),
       channel=st.sampled_from([c for c in Channel if c.from_device]))
def test_arbitrary_bytes_are_rejected(payload: bytes, channel: Channel) -> None:
    assert isinstance(classify(topic(DEV, channel), payload, LOOKUP), Rejected)


# -- dedup and gaps -------------------------------------------------------------------


def test_seq_state_dedups_and_counts_missing_until_filled() -> None:
    s = SeqState.first(1)
    assert [s.observe(1, q) for q in (1, 2, 3)] == [True, True, True]
    assert s.observe(1, 2) is False and s.duplicates == 1
    assert s.floor == 3 and s.intervals == []
    # reconnect: birth/status (new seqs) arrive before the replay of 4..6
    assert s.observe(2, 7) and s.observe(2, 8)
    assert s.missing == 3 and s.intervals == [[7, 8]]
    assert [s.observe(1, q) for q in (4, 5, 6)] == [True, True, True]
    assert s.missing == 0 and s.floor == 8 and s.intervals == []
    assert s.observe(1, 5) is False and s.duplicates == 2
    assert s.accepted == 8 and s.last_bd == 2 and s.gaps == 0


def test_seq_state_gives_up_old_holes_and_roundtrips() -> None:
    s = SeqState.first(1)
    for q in range(1, 2 * (MAX_HOLES + 10), 2):  # every even seq lost
        s.observe(1, q)
    assert len(s.intervals) == MAX_HOLES
    assert s.gaps + s.missing == s.max_seq - s.accepted
    assert s.gaps > 0
    again = SeqState.from_row({"device_id": "x", **s.to_row()})
    assert again == s
    assert again.observe(1, 1) is False


def test_first_seen_device_starts_below_its_first_seq() -> None:
    s = SeqState.first(50)
    assert s.observe(3, 50) and s.missing == 49  # 1..49 may still be replayed
    assert s.observe(3, 10)
    late = SeqState.first(10**9)
    assert late.observe(1, 10**9) and late.missing <= 100_000


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.integers(1, 400), max_size=300))
def test_seq_state_matches_a_set(seqs: list[int]) -> None:
    s = SeqState.first(seqs[0] if seqs else 1)
    seen: set[int] = set()
    for q in seqs:
        assert s.observe(1, q) is (q not in seen)
        seen.add(q)
    assert s.accepted == len(seen) and s.duplicates == len(seqs) - len(seen)
    if seen:  # every seq below the highest is seen, missing or given up
        assert s.missing + s.gaps == max(seen) - len(seen)
