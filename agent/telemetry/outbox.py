"""Durable outbox between the agent and MQTT: SQLite in WAL mode, bounded in bytes.

Rules:

* :meth:`Outbox.put` commits a message before it returns; the message then survives a
  crash of the process (SIGKILL included) and is delivered at least once.
* Durability: WAL with ``synchronous=NORMAL`` (the default). A committed transaction is
  in the WAL file in the OS page cache when ``put`` returns, so killing the process
  loses nothing; only an OS crash or power loss may lose the last commits (never corrupt
  the file). :attr:`Synchronous.FULL` adds an fsync per commit for power-loss durability
  at a much higher cost per ``put``; pick it in :class:`OutboxConfig` where it matters.
* ``seq`` is assigned here, strictly increasing across restarts (persisted), shared by
  every message the device sends (the client reserves seqs for direct messages too).
* ``bd`` (connect counter) is persisted; :meth:`begin_connection` increments it before
  every connect attempt. Each row keeps the ``bd`` current when it was put, so a resend
  has the same ``(bd, seq)`` and the receiver can drop the duplicate.
* Bounded by ``max_bytes`` (wire size upper bound of the stored messages): a ``put``
  that would exceed it evicts the oldest rows first and adds them to the persisted
  ``dropped`` counter, which the heartbeat reports.
* Thread-safe: a writer connection and a reader connection (WAL lets the sender's
  reads run beside writes), each behind its own lock; JSON encoding happens outside.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edgefleet.agent.telemetry.envelope import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEVICE_CHANNELS,
    ENVELOPE_OVERHEAD_BYTES,
    Channel,
    encode_body,
)
from edgefleet.agent.telemetry.errors import EnvelopeError, OutboxError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    bd INTEGER NOT NULL,
    channel TEXT NOT NULL,
    ts REAL NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_INSERT = "INSERT INTO outbox (seq, bd, channel, ts, body, size) VALUES (?,?,?,?,?,?)"


class Synchronous(Enum):
    """SQLite ``synchronous`` level of the outbox (see the module docstring)."""

    NORMAL = "NORMAL"  # survives process crash and SIGKILL
    FULL = "FULL"  # also survives power loss: one fsync per commit


@dataclass(frozen=True)
class OutboxConfig:
    """Bounds and durability of the outbox."""

    max_bytes: int = 64 * 1024 * 1024  # wire bytes of stored messages before eviction
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES  # one envelope on the wire
    synchronous: Synchronous = Synchronous.NORMAL
    busy_timeout_ms: int = 5000


@dataclass(frozen=True)
class OutboxRecord:
    """One stored message; ``body_json`` is the compact JSON of the body."""

    seq: int
    bd: int
    channel: Channel
    ts: float
    body_json: str


@dataclass(frozen=True)
class OutboxStats:
    """Depth (messages), stored bytes and the persisted eviction counter."""

    depth: int
    bytes: int
    dropped: int


class Outbox:
    """A durable FIFO of envelopes-to-be keyed by ``seq`` (see the module docstring).

    Raises:
        OutboxError: the database cannot be opened or initialized.
    """

    def __init__(
        self,
        path: Path | str,
        config: OutboxConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.config = config or OutboxConfig()
        if self.config.max_bytes < self.config.max_payload_bytes:
            raise ValueError("max_bytes must hold at least one maximum-size payload")
        self._clock = clock
        self._lock = threading.Lock()  # the writer connection and the counters
        self._read_lock = threading.Lock()  # the reader connection
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout_ms)}")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
            self._db.execute(f"PRAGMA synchronous={self.config.synchronous.value}")
            self._db.executescript(_SCHEMA)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            row = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0), COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
            self._reader = sqlite3.connect(str(self.path), isolation_level=None,
                                           check_same_thread=False)
            self._reader.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout_ms)}")
        except sqlite3.Error as e:
            raise OutboxError(f"cannot open outbox {self.path}: {e}") from e
        if meta.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: unsupported outbox schema {meta['schema']}")
        self._last_seq = max(int(meta.get("last_seq", 0)), int(row[0]))
        self._bd = int(meta.get("bd", 0))
        self._dropped = int(meta.get("dropped", 0))
        self._depth = int(row[1])
        self._bytes = int(row[2])
        self._closed = False

    # -- writers ---------------------------------------------------------------------

    def put(self, channel: Channel, body: Mapping[str, Any]) -> int:
        """Commit one message and return its ``seq``.

        Raises:
            EnvelopeError: server channel, or a body that is not JSON or too large.
            OutboxError: the write failed (disk full, closed outbox...).
        """
        if channel not in DEVICE_CHANNELS:
            raise EnvelopeError(f"{channel.value!r} is not a device → server channel")
        body_json = encode_body(body, self.config.max_payload_bytes)
        size = len(body_json.encode("utf-8")) + ENVELOPE_OVERHEAD_BYTES
        ts = float(self._clock())
        with self._lock:
            self._check_open()
            seq = self._last_seq + 1
            row = (seq, self._bd, channel.value, ts, body_json, size)
            evicted = freed = 0
            try:
                if self._bytes + size <= self.config.max_bytes:
                    # the common case is one autocommitted INSERT: the stored last_seq is
                    # max(meta.last_seq, MAX(seq)), so meta changes only when rows leave
                    self._db.execute(_INSERT, row)
                else:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._set_meta("last_seq", self._last_seq)
                    evicted, freed = self._evict_for(size)
                    self._set_meta("dropped", self._dropped + evicted)
                    self._db.execute(_INSERT, row)
                    self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"outbox write failed: {e}") from e
            self._last_seq = seq
            self._depth += 1 - evicted
            self._bytes += size - freed
            if evicted:
                self._dropped += evicted
                log.warning("outbox full: evicted %d oldest messages (%d dropped in total)",
                            evicted, self._dropped)
            return seq

    def reserve_seq(self) -> int:
        """Allocate a ``seq`` for a message sent directly (birth, status, heartbeat).

        Raises:
            OutboxError: the write failed.
        """
        with self._lock:
            self._check_open()
            seq = self._last_seq + 1
            self._commit_meta("last_seq", seq)
            self._last_seq = seq
            return seq

    def begin_connection(self) -> int:
        """Increment and persist ``bd`` before a connect attempt; return the new value.

        Raises:
            OutboxError: the write failed.
        """
        with self._lock:
            self._check_open()
            self._commit_meta("bd", self._bd + 1)
            self._bd += 1
            return self._bd

    def ack(self, *seqs: int) -> int:
        """Delete delivered messages (unknown or evicted seqs are ignored); return how many.

        Raises:
            OutboxError: the write failed.
        """
        if not seqs:
            return 0
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._set_meta("last_seq", self._last_seq)  # seqs outlive their rows
                removed = freed = 0
                for start in range(0, len(seqs), 500):
                    chunk = seqs[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    n, b = self._db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox "  # noqa: S608
                        f"WHERE seq IN ({marks})", chunk).fetchone()
                    self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})",  # noqa: S608
                                     chunk)
                    removed += int(n)
                    freed += int(b)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise OutboxError(f"outbox ack failed: {e}") from e
            self._depth -= removed
            self._bytes -= freed
            return removed

    # -- readers ---------------------------------------------------------------------

    def peek(self, n: int, after_seq: int = 0) -> list[OutboxRecord]:
        """Up to ``n`` oldest stored messages with ``seq > after_seq``, in seq order.

        Raises:
            OutboxError: the read failed.
        """
        # A separate read connection: in WAL mode it reads the last committed state
        # without waiting for (or blocking) writers, so publishers never queue behind
        # the sender's reads.
        with self._read_lock:
            self._check_open()
            try:
                rows = self._reader.execute(
                    "SELECT seq, bd, channel, ts, body FROM outbox WHERE seq > ? "
                    "ORDER BY seq LIMIT ?", (after_seq, n)).fetchall()
            except sqlite3.Error as e:
                raise OutboxError(f"outbox read failed: {e}") from e
        return [OutboxRecord(int(s), int(b), Channel(c), float(t), body)
                for s, b, c, t, body in rows]

    @property
    def bd(self) -> int:
        """The current connect counter (0 before the first connect ever)."""
        return self._bd

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` ever allocated (0 if none)."""
        return self._last_seq

    def stats(self) -> OutboxStats:
        """Depth, bytes and dropped count, without touching the disk."""
        with self._lock:
            return OutboxStats(self._depth, self._bytes, self._dropped)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock, self._read_lock:
            if not self._closed:
                self._closed = True
                self._reader.close()
                self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (lock held) -------------------------------------------------------

    def _evict_for(self, size: int) -> tuple[int, int]:
        excess = self._bytes + size - self.config.max_bytes
        if excess <= 0:
            return 0, 0
        evicted = freed = 0
        last = 0
        for seq, row_size in self._db.execute("SELECT seq, size FROM outbox ORDER BY seq"):
            evicted += 1
            freed += int(row_size)
            last = int(seq)
            if freed >= excess:
                break
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (last,))
        return evicted, freed

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def _commit_meta(self, key: str, value: int) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._set_meta(key, value)
            self._set_meta("schema", SCHEMA_VERSION)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise OutboxError(f"outbox write failed: {e}") from e

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.debug("rollback failed (no transaction open)")

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError("outbox is closed")
