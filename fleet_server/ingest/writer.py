"""The ingestion engine: a bounded queue fed by the MQTT thread, one writer thread that
validates (``pipeline``), deduplicates and writes batches in one transaction each.

A batch closes at ``batch_max_messages`` messages, after ``batch_max_delay_s``, or as
soon as the queue stays empty for ``idle_flush_s``. Every message of a batch is
acknowledged (its ``ack`` callable: the MQTT PUBACK when the subscriber uses manual acks)
only after the batch's transaction committed, so a crash between receipt and commit makes
the broker re-deliver, and the persisted dedup state drops what was already stored.

Heartbeat model entries that name their ``version`` are upserted into
``ingest_model_stats`` (a row per device, model and version; a row is only replaced by a
heartbeat at least as new, by device clock). Update events arriving on the ``events``
channel in the HTTP form are also handed to ``updates.events.UpdateEvents.record`` in the
same transaction, so ``device_update_status`` knows each device's update state whichever
transport reported it (only when the updates component's tables exist).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlite_utils import Database
from sqlite_utils.db import Table

from edgefleet.agent.telemetry.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Envelope, Status
from edgefleet.fleet_server.ingest import bodies
from edgefleet.fleet_server.ingest.bodies import ReferenceLookup
from edgefleet.fleet_server.ingest.errors import IngestConfigError
from edgefleet.fleet_server.ingest.pipeline import (
    Accepted,
    Ignored,
    Outcome,
    Reason,
    Rejected,
    SeqState,
    classify,
)
from edgefleet.fleet_server.storage import Store, utcnow
from edgefleet.fleet_server.updates.events import STATUS_TABLE, UpdateEvents

log = logging.getLogger(__name__)

Ack = Callable[[], None]
#: Called (inside the batch transaction) with a device id and its birth body.
InventoryHook = Callable[[str, Mapping[str, Any]], None]

COUNTER_NAMES = ("received", "accepted", "duplicates", "ignored", "dropped_queue_full",
                 "write_failed", "batches")
REJECTED_PREFIX = "rejected."


@dataclass(frozen=True)
class IngestConfig:
    """Ingestion settings."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    batch_max_messages: int = 500
    batch_max_delay_s: float = 0.2
    idle_flush_s: float = 0.005
    queue_size: int = 100_000
    predictions_keep_per_device: int = 1000
    log_interval_s: float = 10.0
    write_retries: int = 3

    def __post_init__(self) -> None:
        if self.max_payload_bytes < 512 or self.batch_max_messages < 1 or self.queue_size < 1:
            raise IngestConfigError("max_payload_bytes >= 512, batch and queue sizes >= 1")
        if self.batch_max_delay_s <= 0 or self.idle_flush_s < 0:
            raise IngestConfigError("batch_max_delay_s must be > 0, idle_flush_s >= 0")
        if self.predictions_keep_per_device < 1:
            raise IngestConfigError("predictions_keep_per_device must be >= 1")


class RateLimitedLog:
    """At most one warning per key per ``interval_s``; the suppressed count is reported."""

    def __init__(self, logger: logging.Logger, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged within the interval. True when logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] += 1
            return False
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
        self._log.warning(message + suffix, *args)
        return True


@dataclass
class _Item:
    topic: str
    payload: bytes
    ack: Ack | None


@dataclass
class _Batch:
    """What one batch changes, built before the transaction."""

    counts: Counter[str] = field(default_factory=Counter)
    acks: list[Ack] = field(default_factory=list)


class Ingester:
    """Validates, deduplicates and stores device messages. Thread-safe ``submit``."""

    def __init__(self, store: Store, reference: ReferenceLookup, *,
                 config: IngestConfig | None = None,
                 on_inventory: InventoryHook | None = None) -> None:
        self.store = store
        self.config = config or IngestConfig()
        self._reference = reference
        self._on_inventory = on_inventory
        self._queue: queue.Queue[_Item] = queue.Queue(self.config.queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq: dict[str, SeqState] = {}
        self._lock = threading.Lock()
        self._live: Counter[str] = Counter()  # counted here, not yet in the database
        self._processed = 0
        self._rlog = RateLimitedLog(log, self.config.log_interval_s)
        self._updates: UpdateEvents | None = None

    # -- producer side (the MQTT network thread) --------------------------------------

    def submit(self, topic: str, payload: bytes, ack: Ack | None = None) -> bool:
        """Queue one message; never raises. False when it had to be dropped (queue full
        for a second, or stopping): it is then not acknowledged."""
        try:
            item = _Item(topic, bytes(payload), ack)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=1.0)
                    return True
                except queue.Full:
                    with self._lock:
                        self._live["dropped_queue_full"] += 1
                    self._rlog.warning("queue_full", "ingest queue full: message dropped")
                    return False
            return False
        except Exception:  # never raise into paho
            log.exception("ingest submit failed")
            return False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Ingester:
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def processed(self) -> int:
        """Messages taken from the queue and committed (or given up) so far."""
        return self._processed

    def wait_idle(self, timeout_s: float = 30.0, settle_s: float = 0.3) -> bool:
        """Block until nothing was processed for ``settle_s`` and the queue is empty."""
        deadline = time.monotonic() + timeout_s
        last, since = self._processed, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = self._processed
            if now != last or self._queue.qsize():
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= settle_s:
                return True
        return False

    def live_counters(self) -> dict[str, int]:
        """Counters not yet persisted (queue drops happen outside batches)."""
        with self._lock:
            return dict(self._live)

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            deadline = time.monotonic() + self.config.batch_max_delay_s
            while len(batch) < self.config.batch_max_messages:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self._queue.get(timeout=min(remaining,
                                                             self.config.idle_flush_s)))
                except queue.Empty:
                    break
            try:
                self._process(batch)
            except Exception:  # the loop must survive anything
                log.exception("ingest batch failed")
            self._processed += len(batch)

    def _process(self, items: list[_Item]) -> None:
        outcomes = [classify(i.topic, i.payload, self._reference,
                             max_payload_bytes=self.config.max_payload_bytes) for i in items]
        written = False
        for attempt in range(1, self.config.write_retries + 1):
            try:
                self._write(outcomes)
                written = True
                break
            except Exception:
                log.exception("ingest write failed (attempt %d)", attempt)
                time.sleep(0.2 * attempt)
        if not written:
            self._add_counters_safely(Counter({"write_failed": len(items)}))
        for item in items:
            if item.ack is not None:
                try:
                    item.ack()
                except Exception:
                    self._rlog.warning("ack", "acknowledging a message failed")

    def _log_rejection(self, outcome: Rejected) -> None:
        self._rlog.warning(f"rejected.{outcome.reason.value}",
                           "ingest rejected a message (device %r): %s: %s",
                           outcome.device, outcome.reason.value, outcome.detail[:300])

    def _write(self, outcomes: list[Outcome]) -> Counter[str]:
        counts: Counter[str] = Counter(received=len(outcomes), batches=1)
        with self._lock:
            live, self._live = self._live, Counter()
        counts.update(live)
        accepted: list[Accepted] = []
        for outcome in outcomes:
            if isinstance(outcome, Accepted):
                accepted.append(outcome)
            elif isinstance(outcome, Rejected):
                counts[REJECTED_PREFIX + outcome.reason.value] += 1
                if outcome.reason is Reason.INTERNAL:
                    log.error("ingest validator failed: %s", outcome.detail)
            elif isinstance(outcome, Ignored):
                counts["ignored"] += 1
        try:
            now = utcnow()
            with self.store.transaction() as db:
                states = self._states(db, {a.envelope.device for a in accepted})
                new: list[Accepted] = []
                for a in accepted:
                    env = a.envelope
                    state = states.get(env.device)
                    if state is None:
                        state = states[env.device] = SeqState.first(env.seq)
                    if state.observe(env.bd, env.seq):
                        new.append(a)
                    else:
                        counts["duplicates"] += 1
                counts["accepted"] += len(new)
                _Apply(db, now, self.config, self._on_inventory,
                       self._update_events(db)).run(new)
                for device, state in states.items():
                    _upsert(db, "ingest_seq", {"device_id": device, **state.to_row()},
                            ("device_id",))
                _add_counters(db, counts)
        except BaseException:
            with self._lock:
                self._live.update(live)  # not persisted: keep for the next batch
            raise
        self._seq.update(states)
        for outcome in outcomes:
            if isinstance(outcome, Rejected):
                self._log_rejection(outcome)
        return counts

    def _update_events(self, db: Database) -> UpdateEvents | None:
        """The updates component's event store, when its tables exist in this database."""
        if self._updates is None and STATUS_TABLE in db.table_names():
            self._updates = UpdateEvents(self.store)
        return self._updates

    def _add_counters_safely(self, counts: Counter[str]) -> None:
        try:
            with self.store.transaction() as db:
                _add_counters(db, counts)
        except Exception:
            log.exception("ingest counters not persisted")

    def _states(self, db: Database, devices: Iterable[str]) -> dict[str, SeqState]:
        """Working copies of the known devices' dedup states (kept after a commit)."""
        out: dict[str, SeqState] = {}
        for device in devices:
            state = self._seq.get(device)
            if state is None:
                rows = list(db["ingest_seq"].rows_where("device_id = ?", [device]))
                state = SeqState.from_row(rows[0]) if rows else None
            if state is not None:
                out[device] = state.copy()
        return out


def _table(db: Database, name: str) -> Table:
    return cast(Table, db[name])


def _upsert(db: Database, table: str, row: Mapping[str, Any], pk: tuple[str, ...]) -> None:
    """INSERT or UPDATE every column (sqlite-utils' upsert silently skips new rows of
    tables with NOT NULL columns). Table and column names are this module's constants."""
    cols = list(row)
    names = ", ".join(f'"{c}"' for c in cols)
    marks = ", ".join("?" for _ in cols)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c not in pk)
    sql = (f'INSERT INTO "{table}" ({names}) VALUES ({marks}) '  # noqa: S608 (constants)
           f"ON CONFLICT ({', '.join(pk)}) DO UPDATE SET {updates}")
    db.execute(sql, [row[c] for c in cols])


def _add_counters(db: Database, counts: Mapping[str, int]) -> None:
    for name, value in counts.items():
        if value:
            db.execute("INSERT INTO ingest_counters(name, value) VALUES (?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                       [name, int(value)])


def _status_key(bd: int, seq: int, state: Status) -> tuple[int, int, int]:
    return (bd, 1 if state is Status.OFFLINE else 0, seq)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _Apply:
    """Writes the accepted, new messages of one batch (inside its transaction)."""

    def __init__(self, db: Database, now: str, config: IngestConfig,
                 on_inventory: InventoryHook | None,
                 update_events: UpdateEvents | None = None) -> None:
        self.db = db
        self.now = now
        self.config = config
        self.on_inventory = on_inventory
        self.update_events = update_events
        self.model_stats: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.updates: dict[str, list[Mapping[str, Any]]] = {}
        self.presence: dict[str, dict[str, Any]] = {}
        self.predictions: list[dict[str, Any]] = []
        self.latency: dict[tuple[str, str], dict[str, Any]] = {}
        self.heartbeats: dict[str, Mapping[str, Any]] = {}
        self.prediction_devices: set[str] = set()

    def run(self, messages: list[Accepted]) -> None:
        for message in messages:
            self._one(message.envelope, message.body)
        if self.predictions:
            _table(self.db, "ingest_predictions").insert_all(self.predictions)
            keep = self.config.predictions_keep_per_device
            for device in self.prediction_devices:
                self.db.execute(
                    "DELETE FROM ingest_predictions WHERE device_id = ? AND id <= "
                    "(SELECT id FROM ingest_predictions WHERE device_id = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)", [device, device, keep])
        for device, heartbeat in self.heartbeats.items():
            self.presence[device]["heartbeat"] = _dumps(heartbeat)
        for row in self.presence.values():
            _upsert(self.db, "ingest_presence", row, ("device_id",))
        for latency in self.latency.values():
            _upsert(self.db, "ingest_latency", latency, ("device_id", "model"))
        if self.model_stats:
            rows = list(self.model_stats.values())
            self.db.conn.executemany(_MODEL_STATS_UPSERT, [[r[c] for c in _MODEL_STATS_COLUMNS]
                                                           for r in rows])
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

    def _presence(self, device: str) -> dict[str, Any]:
        row = self.presence.get(device)
        if row is None:
            rows = list(self.db["ingest_presence"].rows_where("device_id = ?", [device]))
            row = rows[0] if rows else {"device_id": device, "state": None, "state_bd": None,
                                        "state_seq": None, "state_changed_at": None,
                                        "inventory": None, "birth_at": None,
                                        "heartbeat": None, "heartbeat_at": None,
                                        "heartbeat_ts": None}
            self.presence[device] = row
        return row

    def _one(self, env: Envelope, body: bodies.Body) -> None:
        device = env.device
        row = self._presence(device)
        row["last_seen_at"] = self.now
        row["last_seen_ts"] = max(env.ts, row.get("last_seen_ts") or 0.0)
        if isinstance(body, bodies.StatusBody):
            # Ordered by bd; within one connection (bd) its offline is final: the client
            # builds the offline (its last will) before the online, so its seq is lower.
            if row["state_bd"] is None or _status_key(env.bd, env.seq, body.state) > \
                    _status_key(row["state_bd"], row["state_seq"], Status(row["state"])):
                if row["state"] != body.state.value:
                    row["state_changed_at"] = self.now
                row.update(state=body.state.value, state_bd=env.bd, state_seq=env.seq)
        elif isinstance(body, bodies.Birth):
            row.update(inventory=_dumps(body.inventory), birth_at=self.now)
            if row["state"] is None:
                row.update(state=Status.ONLINE.value, state_changed_at=self.now)
            if self.on_inventory is not None:
                try:
                    self.on_inventory(device, body.inventory)
                except Exception:
                    log.exception("inventory update failed for %s", device)
        elif isinstance(body, bodies.Heartbeat):
            if row["heartbeat_ts"] is None or env.ts >= row["heartbeat_ts"]:
                self.heartbeats[device] = body.body  # serialized once per batch
                row.update(heartbeat_at=self.now, heartbeat_ts=env.ts)
                for lat in body.latency:
                    self.latency[(device, lat.model)] = {
                        "device_id": device, "model": lat.model,
                        "predictions": lat.predictions, "p50_ms": lat.p50_ms,
                        "p95_ms": lat.p95_ms, "ts": env.ts, "updated_at": self.now}
            for stats in body.stats:
                key = (device, stats.model, stats.version)
                current = self.model_stats.get(key)
                if current is None or env.ts >= current["ts"]:
                    self.model_stats[key] = _model_stats_row(device, stats, env.ts, self.now)
        elif isinstance(body, bodies.Predictions):
            self.prediction_devices.add(device)
            for record in body.records:
                ts = record.get("ts", env.ts)
                self.predictions.append({
                    "device_id": device, "model": body.model, "version": body.version,
                    "seq": env.seq, "ts": float(ts), "record": _dumps(record),
                    "received_at": self.now})
        elif isinstance(body, bodies.Drift):
            s = body.summary
            _table(self.db, "drift_windows").insert({
                "device_id": device, "model": body.model, "version": body.version,
                "start": s.start_ts, "end": s.end_ts, "n": s.predictions,
                "summary": _dumps(s.to_dict()), "received_at": self.now})
        elif isinstance(body, bodies.Events):
            _table(self.db, "ingest_events").insert_all([{
                "device_id": device, "seq": env.seq, "ts": float(e["ts"]),
                "kind": str(e["kind"]), "event": _dumps(e), "received_at": self.now}
                for e in body.events])
            if body.update:
                self.updates.setdefault(device, []).extend(body.update)


_MODEL_STATS_COLUMNS = ("device_id", "model", "version", "predictions", "p50_ms", "p95_ms",
                        "labeled", "correct", "shadow_version", "shadow_compared",
                        "shadow_agreed", "shadow_p95_ms", "ts", "updated_at")
_MODEL_STATS_KEY = ("device_id", "model", "version")
# A row is only replaced by a heartbeat at least as new (device clock): an outbox replay
# of an old heartbeat must not overwrite newer counters of the same version.
_MODEL_STATS_UPSERT = (
    f"INSERT INTO ingest_model_stats ({', '.join(_MODEL_STATS_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _MODEL_STATS_COLUMNS)}) "
    f"ON CONFLICT ({', '.join(_MODEL_STATS_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _MODEL_STATS_COLUMNS
                if c not in _MODEL_STATS_KEY)
    + " WHERE excluded.ts >= ingest_model_stats.ts"
)


def _model_stats_row(device: str, stats: bodies.ModelStats, ts: float,
                     now: str) -> dict[str, Any]:
    shadow = stats.shadow
    return {"device_id": device, "model": stats.model, "version": stats.version,
            "predictions": stats.predictions, "p50_ms": stats.p50_ms, "p95_ms": stats.p95_ms,
            "labeled": stats.labeled, "correct": stats.correct,
            "shadow_version": shadow.version if shadow else None,
            "shadow_compared": shadow.compared if shadow else None,
            "shadow_agreed": shadow.agreed if shadow else None,
            "shadow_p95_ms": shadow.p95_ms if shadow else None,
            "ts": ts, "updated_at": now}
