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

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from sqlite_utils import Database

from edgefleet.agent.telemetry.envelope import DEFAULT_MAX_PAYLOAD_BYTES
from edgefleet.fleet_server.ingest.apply import (
    SEQ_UPSERT,
    BatchApply,
    InventoryHook,
    Presence,
    copy_presence,
    load_presence,
    load_seq_states,
    seq_rows,
)
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

#: Messages validated between two voluntary GIL hand-overs of the writer thread.
_YIELD_EVERY = 50

COUNTER_NAMES = ("received", "accepted", "duplicates", "ignored", "dropped_queue_full",
                 "write_failed", "batches")
REJECTED_PREFIX = "rejected."


@dataclass(frozen=True)
class IngestConfig:
    """Ingestion settings."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    batch_max_messages: int = 500
    batch_max_delay_s: float = 0.2
    idle_flush_s: float = 0.002
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


@dataclass(slots=True)
class _Item:
    topic: str
    payload: bytes
    ack: Ack | None


class Ingester:
    """Validates, deduplicates and stores device messages. Thread-safe ``submit``."""

    def __init__(self, store: Store, reference: ReferenceLookup, *,
                 config: IngestConfig | None = None,
                 on_inventory: InventoryHook | None = None) -> None:
        self.store = store
        self.config = config or IngestConfig()
        self._reference = reference
        self._on_inventory = on_inventory
        # SimpleQueue (C, lock-free for the producer) bounded by hand: queue.Queue's
        # Python-level conditions cost a lock handoff between the threads per message.
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        #: Called on the writer thread after each batch's acks (the subscriber sends the
        #: PUBACKs the acks collected, as one write).
        self.after_acks: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq: dict[str, SeqState] = {}  # committed dedup state of seen devices
        self._presence: dict[str, Presence] = {}  # committed presence of seen devices
        self._accepted = 0  # accepted messages committed by this ingester
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
            if self._stop.is_set():
                return False
            if self._queue.qsize() >= self.config.queue_size:
                deadline = time.monotonic() + 1.0
                while self._queue.qsize() >= self.config.queue_size:
                    if self._stop.is_set():
                        return False
                    if time.monotonic() >= deadline:
                        with self._lock:
                            self._live["dropped_queue_full"] += 1
                        self._rlog.warning("queue_full", "ingest queue full: message dropped")
                        return False
                    time.sleep(0.005)
            self._queue.put(_Item(topic, bytes(payload), ack))
            return True
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

    @property
    def accepted(self) -> int:
        """Messages accepted (valid and new) and committed since this ingester started:
        an in-memory count, cheap to poll (``ingest_stats`` has the persisted totals)."""
        return self._accepted

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
        outcomes: list[Outcome] = []
        for n, item in enumerate(items, 1):
            outcomes.append(classify(item.topic, item.payload, self._reference,
                                     max_payload_bytes=self.config.max_payload_bytes))
            if n % _YIELD_EVERY == 0:
                # Hand the GIL over: the network threads (paho, an in-process broker)
                # would otherwise wait up to the switch interval (5 ms) per system call.
                time.sleep(0)
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
        if self.after_acks is not None:
            try:
                self.after_acks()
            except Exception:
                self._rlog.warning("ack", "sending acknowledgements failed")

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
        devices = {a.envelope.device for a in accepted}
        try:
            now = utcnow()
            with self.store.transaction() as db:
                states = self._states(db, devices)
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
                presence = self._presence_of(db, {a.envelope.device for a in new})
                BatchApply(db, now, presence,
                           predictions_keep_per_device=self.config.predictions_keep_per_device,
                           on_inventory=self._on_inventory,
                           update_events=self._update_events(db)).run(new)
                db.conn.executemany(SEQ_UPSERT, seq_rows(states))
                _add_counters(db, counts)
        except BaseException:
            with self._lock:
                self._live.update(live)  # not persisted: keep for the next batch
            raise
        self._presence.update(presence)
        self._seq.update(states)
        self._accepted += counts["accepted"]
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

    def _states(self, db: Database, devices: Collection[str]) -> dict[str, SeqState]:
        """Working copies of the known devices' dedup states (kept after a commit)."""
        missing = [d for d in devices if d not in self._seq]
        if missing:
            self._seq.update(load_seq_states(db, missing))
        return {d: self._seq[d].copy() for d in devices if d in self._seq}

    def _presence_of(self, db: Database, devices: Collection[str]) -> dict[str, Presence]:
        """Working copies of the known devices' presence (kept after a commit)."""
        missing = [d for d in devices if d not in self._presence]
        if missing:
            self._presence.update(load_presence(db, missing))
        return copy_presence(self._presence, devices)


def _add_counters(db: Database, counts: Mapping[str, int]) -> None:
    rows = [(name, int(value)) for name, value in counts.items() if value]
    db.conn.executemany("INSERT INTO ingest_counters(name, value) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", rows)
