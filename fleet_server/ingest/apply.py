"""Writing one batch of accepted, new messages inside the batch's transaction.

The hot path reads nothing back: what the ordering rules need of a device's stored
presence (state, its ``(bd, seq)``, the last heartbeat's and message's device clock) is
kept in memory by the writer as :class:`Presence` (loaded in bulk the first time a device
appears, one query per batch for all of them), and every table is written with one
``executemany`` of a fixed statement. The presence upsert only overwrites the columns a
batch changed (``COALESCE(excluded.c, c)``: none of them ever goes back to NULL), so the
large JSON columns (inventory, heartbeat) are written when they change and never read.
The writer is the only writer of these tables; other components only read them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from edgefleet.agent.telemetry.envelope import Envelope, Status
from edgefleet.fleet_server.ingest import bodies
from edgefleet.fleet_server.ingest.pipeline import Accepted, SeqState
from edgefleet.fleet_server.updates.events import UpdateEvents

log = logging.getLogger(__name__)

#: Called (inside the batch transaction) with a device id and its birth body.
InventoryHook = Callable[[str, Mapping[str, Any]], None]

#: Bound parameters per ``IN (...)`` lookup (SQLite's limit is 32766 since 3.32).
_CHUNK = 500


@dataclass(slots=True)
class Presence:
    """The part of a device's ``ingest_presence`` row that orders later updates."""

    state: str | None = None
    state_bd: int | None = None
    state_seq: int | None = None
    last_seen_ts: float = 0.0
    heartbeat_ts: float | None = None

    def copy(self) -> Presence:
        return Presence(self.state, self.state_bd, self.state_seq, self.last_seen_ts,
                        self.heartbeat_ts)


def _upsert_sql(table: str, columns: Sequence[str], key: Sequence[str], *,
                keep_unset: bool = False, where: str = "") -> str:
    """``INSERT ... ON CONFLICT DO UPDATE`` of every non-key column (``keep_unset``: a
    NULL leaves the stored value). Names are this module's constants."""
    sets = ", ".join(
        (f"{c} = COALESCE(excluded.{c}, {table}.{c})" if keep_unset else f"{c} = excluded.{c}")
        for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 (constants)
            f"VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}{where}")


PRESENCE_COLUMNS = ("device_id", "state", "state_bd", "state_seq", "state_changed_at",
                    "last_seen_at", "last_seen_ts", "inventory", "birth_at", "heartbeat",
                    "heartbeat_at", "heartbeat_ts")
_PRESENCE_UPSERT = _upsert_sql("ingest_presence", PRESENCE_COLUMNS, ("device_id",),
                               keep_unset=True)
_LATENCY_COLUMNS = ("device_id", "model", "predictions", "p50_ms", "p95_ms", "ts",
                    "updated_at")
_LATENCY_UPSERT = _upsert_sql("ingest_latency", _LATENCY_COLUMNS, ("device_id", "model"))
SEQ_COLUMNS = ("device_id", "floor", "seen", "max_seq", "last_bd", "accepted", "duplicates",
               "gaps")
SEQ_UPSERT = _upsert_sql("ingest_seq", SEQ_COLUMNS, ("device_id",))
_MODEL_STATS_COLUMNS = ("device_id", "model", "version", "predictions", "p50_ms", "p95_ms",
                        "labeled", "correct", "shadow_version", "shadow_compared",
                        "shadow_agreed", "shadow_p95_ms", "ts", "updated_at")
# A row is only replaced by a heartbeat at least as new (device clock): an outbox replay
# of an old heartbeat must not overwrite newer counters of the same version.
_MODEL_STATS_UPSERT = _upsert_sql("ingest_model_stats", _MODEL_STATS_COLUMNS,
                                  ("device_id", "model", "version"),
                                  where=" WHERE excluded.ts >= ingest_model_stats.ts")
_PREDICTION_INSERT = ("INSERT INTO ingest_predictions (device_id, model, version, seq, ts, "
                      "record, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
_PREDICTION_TRIM = ("DELETE FROM ingest_predictions WHERE device_id = ? AND id <= "
                    "(SELECT id FROM ingest_predictions WHERE device_id = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)")
_EVENT_INSERT = ("INSERT INTO ingest_events (device_id, seq, ts, kind, event, received_at) "
                 "VALUES (?, ?, ?, ?, ?, ?)")
_DRIFT_INSERT = ('INSERT INTO drift_windows (device_id, model, version, start, "end", n, '
                 "summary, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _in_chunks(db: Database, select: str, keys: Collection[str]) -> list[tuple[Any, ...]]:
    """Rows of ``select ... WHERE device_id IN (keys)``, ``_CHUNK`` keys per query."""
    ordered = list(keys)
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ordered), _CHUNK):
        chunk = ordered[start:start + _CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows.extend(db.execute(f"{select} WHERE device_id IN ({marks})",
                               chunk).fetchall())
    return rows


def load_seq_states(db: Database, devices: Collection[str]) -> dict[str, SeqState]:
    """Stored dedup states of ``devices`` (absent devices are left out)."""
    rows = _in_chunks(db, f"SELECT {', '.join(SEQ_COLUMNS)} FROM ingest_seq",  # noqa: S608
                      devices)
    return {row[0]: SeqState.from_row(dict(zip(SEQ_COLUMNS, row, strict=True)))
            for row in rows}


def load_presence(db: Database, devices: Collection[str]) -> dict[str, Presence]:
    """Stored :class:`Presence` of ``devices`` (absent devices are left out)."""
    rows = _in_chunks(db, "SELECT device_id, state, state_bd, state_seq, last_seen_ts, "
                          "heartbeat_ts FROM ingest_presence", devices)
    return {row[0]: Presence(*row[1:]) for row in rows}


def seq_rows(states: Mapping[str, SeqState]) -> list[tuple[Any, ...]]:
    """``SEQ_UPSERT`` parameters for ``states``."""
    return [(device, state.floor, json.dumps(state.intervals) if state.intervals else "[]",
             state.max_seq, state.last_bd, state.accepted, state.duplicates, state.gaps)
            for device, state in states.items()]


def _status_key(bd: int, seq: int, state: Status) -> tuple[int, int, int]:
    return (bd, 1 if state is Status.OFFLINE else 0, seq)


# json.dumps with options builds a new encoder per call: one, reused.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: object) -> str:
    """Compact JSON as stored in the ingest tables."""
    return _ENCODER.encode(value)


class BatchApply:
    """Writes the accepted, new messages of one batch (inside its transaction).

    ``presence`` holds working copies of the known devices' :class:`Presence` (the
    caller keeps them as its cache once the transaction committed); devices missing
    from it are new to the database.
    """

    def __init__(self, db: Database, now: str, presence: dict[str, Presence], *,
                 predictions_keep_per_device: int,
                 on_inventory: InventoryHook | None = None,
                 update_events: UpdateEvents | None = None) -> None:
        self.db = db
        self.now = now
        self.presence = presence
        self.keep = predictions_keep_per_device
        self.on_inventory = on_inventory
        self.update_events = update_events
        self.changes: dict[str, dict[str, Any]] = {}  # device -> presence columns set
        self.model_stats: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self.updates: dict[str, list[Mapping[str, Any]]] = {}
        self.predictions: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.drift: list[tuple[Any, ...]] = []
        self.latency: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.heartbeats: dict[str, Mapping[str, Any]] = {}

    def run(self, messages: list[Accepted]) -> None:
        for message in messages:
            self._one(message.envelope, message.body)
        conn = self.db.conn
        if self.predictions:
            conn.executemany(_PREDICTION_INSERT, self.predictions)
            conn.executemany(_PREDICTION_TRIM, [(d, d, self.keep) for d in
                                                {p[0] for p in self.predictions}])
        if self.events:
            conn.executemany(_EVENT_INSERT, self.events)
        if self.drift:
            conn.executemany(_DRIFT_INSERT, self.drift)
        for device, heartbeat in self.heartbeats.items():
            self.changes[device]["heartbeat"] = dumps(heartbeat)  # once per batch
        conn.executemany(_PRESENCE_UPSERT, [
            tuple(change.get(c) for c in PRESENCE_COLUMNS) for change in self.changes.values()])
        if self.latency:
            conn.executemany(_LATENCY_UPSERT, list(self.latency.values()))
        if self.model_stats:
            conn.executemany(_MODEL_STATS_UPSERT, list(self.model_stats.values()))
        if self.update_events is not None:
            for device, events in self.updates.items():
                self._forward(self.update_events, device, events)

    def _forward(self, update_events: UpdateEvents, device: str,
                 events: list[Mapping[str, Any]]) -> None:
        """Hand a device's update events to the updates component, in device-clock order
        within the batch (outbox replays come late). A failure there is logged and
        undone (savepoint): it must not cost the batch its telemetry."""
        self.db.execute("SAVEPOINT forward_update_events")
        try:
            update_events.record(device, sorted(events, key=lambda e: e["ts"]))
        except Exception:
            self.db.execute("ROLLBACK TO forward_update_events")
            log.exception("update events of %s not recorded", device)
        self.db.execute("RELEASE forward_update_events")

    def _touch(self, device: str, ts: float) -> tuple[Presence, dict[str, Any]]:
        known = self.presence.get(device)
        if known is None:
            known = self.presence[device] = Presence(last_seen_ts=ts)
        change = self.changes.get(device)
        if change is None:
            change = self.changes[device] = {"device_id": device}
        known.last_seen_ts = max(known.last_seen_ts, ts)
        change["last_seen_at"] = self.now
        change["last_seen_ts"] = known.last_seen_ts
        return known, change

    def _one(self, env: Envelope, body: bodies.Body) -> None:
        device = env.device
        known, change = self._touch(device, env.ts)
        if isinstance(body, bodies.Heartbeat):
            self._heartbeat(device, env, body, known, change)
        elif isinstance(body, bodies.StatusBody):
            # Ordered by bd; within one connection (bd) its offline is final: the client
            # builds the offline (its last will) before the online, so its seq is lower.
            if known.state_bd is None or known.state_seq is None or known.state is None \
                    or _status_key(env.bd, env.seq, body.state) > \
                    _status_key(known.state_bd, known.state_seq, Status(known.state)):
                if known.state != body.state.value:
                    change["state_changed_at"] = self.now
                known.state, known.state_bd, known.state_seq = \
                    body.state.value, env.bd, env.seq
                change.update(state=known.state, state_bd=env.bd, state_seq=env.seq)
        elif isinstance(body, bodies.Birth):
            change.update(inventory=dumps(body.inventory), birth_at=self.now)
            if known.state is None:
                known.state = Status.ONLINE.value
                change.update(state=known.state, state_changed_at=self.now)
            if self.on_inventory is not None:
                try:
                    self.on_inventory(device, body.inventory)
                except Exception:
                    log.exception("inventory update failed for %s", device)
        elif isinstance(body, bodies.Predictions):
            for record in body.records:
                self.predictions.append((device, body.model, body.version, env.seq,
                                         float(record.get("ts", env.ts)), dumps(record),
                                         self.now))
        elif isinstance(body, bodies.Drift):
            s = body.summary
            self.drift.append((device, body.model, body.version, s.start_ts, s.end_ts,
                               s.predictions, dumps(s.to_dict()), self.now))
        elif isinstance(body, bodies.Events):
            self.events.extend((device, env.seq, float(e["ts"]), str(e["kind"]), dumps(e),
                                self.now) for e in body.events)
            if body.update:
                self.updates.setdefault(device, []).extend(body.update)

    def _heartbeat(self, device: str, env: Envelope, body: bodies.Heartbeat,
                   known: Presence, change: dict[str, Any]) -> None:
        if known.heartbeat_ts is None or env.ts >= known.heartbeat_ts:
            known.heartbeat_ts = env.ts
            self.heartbeats[device] = body.body  # serialized once per batch
            change["heartbeat_at"] = self.now
            change["heartbeat_ts"] = env.ts
            for lat in body.latency:
                self.latency[(device, lat.model)] = (
                    device, lat.model, lat.predictions, lat.p50_ms, lat.p95_ms, env.ts,
                    self.now)
        for stats in body.stats:
            key = (device, stats.model, stats.version)
            current = self.model_stats.get(key)
            if current is None or env.ts >= current[-2]:
                self.model_stats[key] = _model_stats_row(device, stats, env.ts, self.now)


def _model_stats_row(device: str, stats: bodies.ModelStats, ts: float,
                     now: str) -> tuple[Any, ...]:
    shadow = stats.shadow
    return (device, stats.model, stats.version, stats.predictions, stats.p50_ms,
            stats.p95_ms, stats.labeled, stats.correct,
            shadow.version if shadow else None, shadow.compared if shadow else None,
            shadow.agreed if shadow else None, shadow.p95_ms if shadow else None, ts, now)


def copy_presence(cache: Mapping[str, Presence], devices: Collection[str]) -> dict[str, Presence]:
    """Working copies of the cached presence of ``devices`` (the cache is only updated
    after a commit)."""
    return {d: cache[d].copy() for d in devices if d in cache}
