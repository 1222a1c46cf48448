"""Per-channel body validation (pure): what the server accepts inside a valid envelope.

Bodies may carry extra keys (forward compatibility); the keys below are checked. See
docs/ingest.md for the formats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.drift import DriftError, ReferenceProfile, WindowSummary
from edgefleet.agent.telemetry.envelope import Channel, Status
from edgefleet.fleet_server.api.validation import validate
from edgefleet.fleet_server.ingest.errors import BodyError
from edgefleet.fleet_server.updates.events import EVENT_SCHEMA

MAX_NAME_CHARS = 128
MAX_MODELS = 256
MAX_RECORDS = 10_000
MAX_EVENTS = 100
MAX_NUMBER = 1e15

#: ``(model, version) -> ReferenceProfile`` or None when the registry has no such version
#: (or it has no reference profile).
ReferenceLookup = Callable[[str, str], ReferenceProfile | None]


@dataclass(frozen=True)
class Birth:
    inventory: Mapping[str, Any]


@dataclass(frozen=True)
class StatusBody:
    state: Status


@dataclass(frozen=True)
class ModelLatency:
    model: str
    predictions: int | None
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class ShadowStats:
    """The shadow candidate's comparison counters (shadow mode on)."""

    version: str
    compared: int | None
    agreed: int | None
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class ModelStats:
    """Per-version statistics of a heartbeat model entry that names its ``version``:
    counters and percentiles cover only the time since that version started serving."""

    model: str
    version: str
    predictions: int | None
    p50_ms: float | None
    p95_ms: float | None
    labeled: int | None
    correct: int | None
    shadow: ShadowStats | None


@dataclass(frozen=True)
class Heartbeat:
    body: Mapping[str, Any]
    latency: tuple[ModelLatency, ...]
    stats: tuple[ModelStats, ...] = ()


@dataclass(frozen=True)
class Predictions:
    model: str
    version: str | None
    records: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Drift:
    model: str
    version: str
    summary: WindowSummary


@dataclass(frozen=True)
class Events:
    """``update`` holds the events that are update events in the HTTP form (kind state
    or error, valid against ``updates.events.EVENT_SCHEMA``), in message order."""

    events: tuple[Mapping[str, Any], ...]
    update: tuple[Mapping[str, Any], ...] = ()


Body = Birth | StatusBody | Heartbeat | Predictions | Drift | Events


# The helpers take ``what`` as a %-format and its ``args``: the name of the checked field
# is only formatted when the check fails (validation runs for every message).


def _what(what: str, args: tuple[object, ...]) -> str:
    return what % args if args else what


def _name(value: object, what: str, *args: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
        raise BodyError(f"{_what(what, args)} must be a string of 1-{MAX_NAME_CHARS} characters")
    if not value.isprintable():
        raise BodyError(f"{_what(what, args)} must be printable")
    return value


def _number(value: object, what: str, *args: object) -> float:
    if type(value) is float or type(value) is int:  # the JSON cases
        if 0 <= value <= MAX_NUMBER:  # NaN fails the comparison
            return float(value)
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise BodyError(f"{_what(what, args)} must be a number")
    out = float(value)
    if not math.isfinite(out) or not 0 <= out <= MAX_NUMBER:
        raise BodyError(f"{_what(what, args)} must be a finite number in [0, {MAX_NUMBER:g}]")
    return out


def _count(value: object, what: str, *args: object) -> int:
    if type(value) is not int or not 0 <= value <= 2**63 - 1:
        raise BodyError(f"{_what(what, args)} must be a non-negative integer")
    return value


def _object(value: object, what: str, *args: object) -> Mapping[str, Any]:
    if type(value) is not dict and not isinstance(value, dict):
        raise BodyError(f"{_what(what, args)} must be a JSON object")
    return value


def _name_map(value: object, what: str) -> dict[str, str]:
    mapping = _object(value, what)
    if len(mapping) > MAX_MODELS:
        raise BodyError(f"{what} has more than {MAX_MODELS} entries")
    return {_name(k, "%s key", what): _name(v, "%s[%r]", what, k) for k, v in mapping.items()}


def birth(body: Mapping[str, Any]) -> Birth:
    _name(body.get("agent_version"), "birth agent_version")
    _name_map(body.get("models"), "birth models")
    for key in ("runtimes",):
        if key in body:
            _name_map(body[key], f"birth {key}")
    if "hardware" in body:
        _object(body["hardware"], "birth hardware")
    return Birth(dict(body))


def status(body: Mapping[str, Any]) -> StatusBody:
    try:
        state = Status(body.get("state"))
    except ValueError:
        raise BodyError("status state must be 'online' or 'offline'") from None
    return StatusBody(state)


def _percentiles(stats: Mapping[str, Any], what: str) -> tuple[float | None, float | None]:
    p50 = p95 = None
    if stats.get("latency_ms") is not None:
        lat = _object(stats["latency_ms"], "%s latency_ms", what)
        if lat.get("p50") is not None:
            p50 = _number(lat["p50"], "%s latency p50", what)
        if lat.get("p95") is not None:
            p95 = _number(lat["p95"], "%s latency p95", what)
    return p50, p95


def _optional_count(stats: Mapping[str, Any], key: str, what: str) -> int | None:
    return _count(stats[key], "%s %s", what, key) if stats.get(key) is not None else None


def _agreeing(total: int | None, part: int | None, what: str) -> None:
    if total is not None and part is not None and part > total:
        raise BodyError(f"{what} cannot exceed its total")


def _shadow(value: object, what: str) -> ShadowStats:
    shadow = _object(value, what)
    version = _name(shadow.get("version"), "%s version", what)
    compared = _optional_count(shadow, "compared", what)
    agreed = _optional_count(shadow, "agreed", what)
    _agreeing(compared, agreed, f"{what} agreed")
    p50, p95 = _percentiles(shadow, what)
    return ShadowStats(version, compared, agreed, p50, p95)


def _model(model: str, value: object) -> tuple[ModelLatency, ModelStats | None]:
    what = f"heartbeat {model}"
    stats = _object(value, "heartbeat models[%r]", model)
    predictions = _optional_count(stats, "predictions", what)
    for key in ("errors", "sampled"):
        _optional_count(stats, key, what)
    p50, p95 = _percentiles(stats, what)
    latency = ModelLatency(model, predictions, p50, p95)
    labeled = correct = None
    if stats.get("feedback") is not None:
        feedback = _object(stats["feedback"], f"{what} feedback")
        labeled = _optional_count(feedback, "labeled", f"{what} feedback")
        correct = _optional_count(feedback, "correct", f"{what} feedback")
        _agreeing(labeled, correct, f"{what} feedback correct")
    shadow = _shadow(stats["shadow"], f"{what} shadow") \
        if stats.get("shadow") is not None else None
    if stats.get("version") is None:
        return latency, None
    version = _name(stats["version"], "%s version", what)
    return latency, ModelStats(model, version, predictions, p50, p95, labeled, correct, shadow)


def heartbeat(body: Mapping[str, Any]) -> Heartbeat:
    _number(body.get("uptime_s"), "heartbeat uptime_s")
    for key in ("rss_bytes", "cpu_percent"):
        if body.get(key) is not None:
            _number(body[key], "heartbeat %s", key)
    for key in ("outbox", "inbound"):
        if key in body:
            for name, value in _object(body[key], "heartbeat %s", key).items():
                _count(value, "heartbeat %s.%s", key, name)
    latency: list[ModelLatency] = []
    stats: list[ModelStats] = []
    if "models" in body:
        models = _object(body["models"], "heartbeat models")
        if len(models) > MAX_MODELS:
            raise BodyError(f"heartbeat models has more than {MAX_MODELS} entries")
        for key, value in models.items():
            lat, versioned = _model(_name(key, "heartbeat model"), value)
            latency.append(lat)
            if versioned is not None:
                stats.append(versioned)
    return Heartbeat(dict(body), tuple(latency), tuple(stats))


def predictions(body: Mapping[str, Any]) -> Predictions:
    model = _name(body.get("model"), "predictions model")
    version = _name(body["version"], "predictions version") if "version" in body else None
    records = body.get("records")
    if not isinstance(records, list) or not 1 <= len(records) <= MAX_RECORDS:
        raise BodyError(f"predictions records must be a list of 1-{MAX_RECORDS} objects")
    for i, record in enumerate(records):
        rec = _object(record, "predictions records[%d]", i)
        if "ts" in rec:
            _number(rec["ts"], "predictions records[%d].ts", i)
    return Predictions(model, version, tuple(records))


def drift(body: Mapping[str, Any], reference: ReferenceLookup) -> Drift:
    if set(body) != {"model", "version", "summary"}:
        raise BodyError("drift body must have exactly the keys model, version, summary")
    model = _name(body["model"], "drift model")
    version = _name(body["version"], "drift version")
    profile = reference(model, version)
    ref = body["summary"].get("ref") if isinstance(body["summary"], Mapping) else None
    by_digest = getattr(reference, "by_digest", None)
    if profile is not None and isinstance(ref, str) and ref != profile.digest and by_digest:
        # a known version binned on the profile of another version of the model (the one
        # the device was set up with): validated against that profile
        profile = by_digest(model, ref) or profile
    if profile is None:
        raise BodyError(f"no reference profile for {model} {version}", unknown_version=True)
    try:
        summary = WindowSummary.from_dict(body["summary"], profile)
    except DriftError as e:
        raise BodyError(f"drift summary: {e}") from e
    return Drift(model, version, summary)


def is_update_event(event: Mapping[str, Any]) -> bool:
    """True for an update event in the form the agent reports over HTTP (kind ``state``
    or ``error``, valid against ``updates.events.EVENT_SCHEMA``)."""
    return event.get("kind") in ("state", "error") and not validate(event, EVENT_SCHEMA)


def events(body: Mapping[str, Any]) -> Events:
    items = body.get("events")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_EVENTS:
        raise BodyError(f"events must be a list of 1-{MAX_EVENTS} objects")
    for i, item in enumerate(items):
        event = _object(item, "events[%d]", i)
        _name(event.get("kind"), "events[%d].kind", i)
        _number(event.get("ts"), "events[%d].ts", i)
    return Events(tuple(items), tuple(e for e in items if is_update_event(e)))


def validate_body(channel: Channel, body: Mapping[str, Any], reference: ReferenceLookup) -> Body:
    """The validated body of a device → server message.

    Raises:
        BodyError: the body does not match the channel's format (``unknown_version`` set
            when a drift window names a model version without a reference profile).
    """
    if channel is Channel.BIRTH:
        return birth(body)
    if channel is Channel.STATUS:
        return status(body)
    if channel is Channel.HEARTBEAT:
        return heartbeat(body)
    if channel is Channel.PREDICTIONS:
        return predictions(body)
    if channel is Channel.DRIFT:
        return drift(body, reference)
    if channel is Channel.EVENTS:
        return events(body)
    raise BodyError(f"channel {channel.value} is not a device channel")
