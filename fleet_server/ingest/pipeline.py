"""Pure ingestion logic: classify one MQTT message, and per-device dedup / gap tracking.

No I/O, no clocks: :func:`classify` turns ``(topic, payload)`` into :class:`Accepted`,
:class:`Rejected` (with a :class:`Reason`) or :class:`Ignored` (server → device channels
that the shared subscription also sees); :class:`SeqState` decides whether ``(bd, seq)``
of a device is new, a duplicate, and how many seqs are missing.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edgefleet.agent.telemetry.envelope import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Envelope,
    EnvelopeError,
    decode,
    parse_topic,
)
from edgefleet.fleet_server.ingest.bodies import Body, ReferenceLookup, validate_body
from edgefleet.fleet_server.ingest.errors import BodyError

#: Unfilled holes kept per device before the oldest are given up as gaps.
MAX_HOLES = 256
#: A device first seen at seq s is assumed to have sent at most this many messages the
#: server may still receive (older ones are not counted as missing).
INITIAL_LOOKBACK = 100_000


class Reason(Enum):
    """Why a message was rejected (the counter names of ``rejected``)."""

    TOPIC = "topic"                        # not edgefleet/v1/d/{valid id}/{channel}
    OVERSIZED = "oversized"
    ENVELOPE = "envelope"                  # not a valid envelope (JSON, keys, types)
    WRONG_DEVICE = "wrong_device"          # envelope device != topic device
    WRONG_CHANNEL = "wrong_channel"        # envelope type != topic channel
    BODY = "body"                          # body does not match its channel's format
    UNKNOWN_VERSION = "unknown_model_version"  # drift for a version without a reference
    INTERNAL = "internal"                  # a validator bug; logged with its traceback


@dataclass(frozen=True)
class Accepted:
    envelope: Envelope
    body: Body


@dataclass(frozen=True)
class Rejected:
    reason: Reason
    detail: str
    device: str | None = None


@dataclass(frozen=True)
class Ignored:
    """A server → device message (``desired``, ``cmd``): not ingestion's business."""

    topic: str


Outcome = Accepted | Rejected | Ignored


def classify(topic: str, payload: bytes, reference: ReferenceLookup, *,
             max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Outcome:
    """Validate one message completely. Never raises."""
    try:
        return _classify(topic, payload, reference, max_payload_bytes)
    except Exception as e:  # a bug in a validator must not stop ingestion
        return Rejected(Reason.INTERNAL, f"{type(e).__name__}: {e}")


def _classify(topic: str, payload: bytes, reference: ReferenceLookup,
              max_payload_bytes: int) -> Outcome:
    try:
        device, channel = parse_topic(topic)
    except EnvelopeError as e:
        return Rejected(Reason.TOPIC, str(e))
    if not channel.from_device:
        return Ignored(topic)
    if len(payload) > max_payload_bytes:
        return Rejected(Reason.OVERSIZED, f"{len(payload)} bytes > {max_payload_bytes}",
                        device)
    try:
        env = decode(payload, max_payload_bytes)
    except EnvelopeError as e:
        return Rejected(Reason.ENVELOPE, str(e), device)
    if env.device != device:
        return Rejected(Reason.WRONG_DEVICE,
                        f"envelope names {env.device!r} on {device!r}'s topic", device)
    if env.type is not channel:
        return Rejected(Reason.WRONG_CHANNEL,
                        f"envelope type {env.type.value!r} on the {channel.value} topic", device)
    try:
        body = validate_body(channel, env.body, reference)
    except BodyError as e:
        reason = Reason.UNKNOWN_VERSION if e.unknown_version else Reason.BODY
        return Rejected(reason, str(e), device)
    return Accepted(env, body)


@dataclass
class SeqState:
    """Which seqs of one device were seen: a contiguous ``floor`` plus sorted, disjoint
    ``[lo, hi]`` intervals above it. Holes between are missing (possibly still coming:
    outbox replays arrive after newer direct messages); when more than ``MAX_HOLES``
    holes exist the oldest are given up and counted in ``gaps``.

    Dedup is on ``seq`` alone: the contract makes ``seq`` strictly increasing per device
    across restarts and a re-send keeps its ``(bd, seq)``, so ``seq`` identifies
    ``(bd, seq)``.
    """

    floor: int
    intervals: list[list[int]] = field(default_factory=list)
    max_seq: int = 0
    last_bd: int = 0
    accepted: int = 0
    duplicates: int = 0
    gaps: int = 0

    @classmethod
    def first(cls, seq: int) -> SeqState:
        """The state of a device the server has not seen yet, about to observe ``seq``."""
        return cls(floor=max(0, seq - 1 - INITIAL_LOOKBACK), max_seq=0)

    @property
    def missing(self) -> int:
        """Seqs below the highest seen that have not arrived (yet)."""
        top = max(self.max_seq, self.floor)
        return top - self.floor - sum(hi - lo + 1 for lo, hi in self.intervals)

    def observe(self, bd: int, seq: int) -> bool:
        """Record ``seq``; True when it is new, False for a duplicate (counted)."""
        if seq <= self.floor or self._contains(seq):
            self.duplicates += 1
            return False
        self._insert(seq)
        self.accepted += 1
        self.max_seq = max(self.max_seq, seq)
        self.last_bd = max(self.last_bd, bd)
        if self.intervals and self.intervals[0][0] == self.floor + 1:
            self.floor = self.intervals.pop(0)[1]
        while len(self.intervals) > MAX_HOLES:
            lo, hi = self.intervals.pop(0)
            self.gaps += lo - self.floor - 1
            self.floor = hi
        return True

    def _contains(self, seq: int) -> bool:
        i = bisect.bisect_right(self.intervals, [seq, 2**63]) - 1
        return i >= 0 and self.intervals[i][0] <= seq <= self.intervals[i][1]

    def _insert(self, seq: int) -> None:
        iv = self.intervals
        i = bisect.bisect_right(iv, [seq, 2**63])  # iv[i-1][0] <= seq < iv[i][0]
        joins_left = i > 0 and iv[i - 1][1] == seq - 1
        joins_right = i < len(iv) and iv[i][0] == seq + 1
        if joins_left and joins_right:
            iv[i - 1][1] = iv[i][1]
            del iv[i]
        elif joins_left:
            iv[i - 1][1] = seq
        elif joins_right:
            iv[i][0] = seq
        else:
            iv.insert(i, [seq, seq])

    def copy(self) -> SeqState:
        return SeqState(self.floor, [list(iv) for iv in self.intervals], self.max_seq,
                        self.last_bd, self.accepted, self.duplicates, self.gaps)

    def to_row(self) -> dict[str, Any]:
        return {"floor": self.floor, "seen": json.dumps(self.intervals),
                "max_seq": self.max_seq, "last_bd": self.last_bd, "accepted": self.accepted,
                "duplicates": self.duplicates, "gaps": self.gaps}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SeqState:
        return cls(floor=int(row["floor"]), intervals=[list(x) for x in json.loads(row["seen"])],
                   max_seq=int(row["max_seq"]), last_bd=int(row["last_bd"]),
                   accepted=int(row["accepted"]), duplicates=int(row["duplicates"]),
                   gaps=int(row["gaps"]))
