"""Tables of the ingest component, as versioned migrations.

* ``drift_windows``: every accepted drift window (FIXED schema: the fleet-drift feature
  reads it): ``summary`` is the validated ``WindowSummary.to_dict()`` JSON, ``n`` its
  prediction count, ``start``/``end`` the window bounds (device clock, unix seconds),
  ``received_at`` the server clock (ISO-8601 UTC).
* ``ingest_presence``: per device, online/offline (from ``status``, ordered by
  ``(bd, seq)``), last seen (any accepted message), the last birth inventory and the last
  heartbeat body.
* ``ingest_latency``: per device and model, the last reported prediction count and
  latency p50/p95 (from heartbeats).
* ``ingest_predictions``: sampled prediction records, newest ``keep`` per device.
* ``ingest_events``: device events (update progress, errors) received over MQTT.
* ``ingest_seq``: per device, the dedup state (contiguous floor + seen seqs above it),
  gap and duplicate counts: persisted so a restart does not re-accept old messages.
* ``ingest_counters``: the ingestion counters (received, accepted, rejected by reason...).
* ``ingest_model_stats`` (migration 2): per device, model and *version served*, the last
  heartbeat's counters for that version (predictions, latency p50/p95, feedback labels
  and correct ones, shadow comparisons). Rows of older versions stay: a rollout compares
  the same devices' old-version latency and accuracy with the new version's. ``ts`` is
  the device clock, ``updated_at`` the server clock (ISO-8601 UTC).

No foreign keys to ``devices``: messages can arrive from devices this server does not know
(an external, anonymous broker in tests and development).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

_V1 = [
    """CREATE TABLE drift_windows (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    n INTEGER NOT NULL,
    summary TEXT NOT NULL,
    received_at TEXT NOT NULL
)""",
    'CREATE INDEX drift_windows_model_version_end ON drift_windows(model, version, "end")',
    "CREATE INDEX drift_windows_device ON drift_windows(device_id, id)",
    """CREATE TABLE ingest_presence (
    device_id TEXT PRIMARY KEY,
    state TEXT,                          -- online | offline | NULL (no status yet)
    state_bd INTEGER,
    state_seq INTEGER,
    state_changed_at TEXT,
    last_seen_at TEXT NOT NULL,          -- server clock of the last accepted message
    last_seen_ts REAL NOT NULL,          -- device clock (envelope ts) of that message
    inventory TEXT,                      -- JSON body of the last birth
    birth_at TEXT,
    heartbeat TEXT,                      -- JSON body of the last heartbeat
    heartbeat_at TEXT,
    heartbeat_ts REAL
)""",
    """CREATE TABLE ingest_latency (
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    predictions INTEGER,
    p50_ms REAL,
    p95_ms REAL,
    ts REAL NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (device_id, model)
)""",
    """CREATE TABLE ingest_predictions (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    record TEXT NOT NULL,
    received_at TEXT NOT NULL
)""",
    "CREATE INDEX ingest_predictions_device ON ingest_predictions(device_id, id)",
    """CREATE TABLE ingest_events (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    received_at TEXT NOT NULL
)""",
    "CREATE INDEX ingest_events_device ON ingest_events(device_id, id)",
    """CREATE TABLE ingest_seq (
    device_id TEXT PRIMARY KEY,
    floor INTEGER NOT NULL,              -- every seq <= floor was seen or counted as a gap
    seen TEXT NOT NULL,                  -- JSON list of seen seqs above floor
    max_seq INTEGER NOT NULL,
    last_bd INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    gaps INTEGER NOT NULL
)""",
    """CREATE TABLE ingest_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
)""",
]


def _v1(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction.
    for statement in _V1:
        db.execute(statement)


_V2 = [
    """CREATE TABLE ingest_model_stats (
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    predictions INTEGER,
    p50_ms REAL,
    p95_ms REAL,
    labeled INTEGER,
    correct INTEGER,
    shadow_version TEXT,
    shadow_compared INTEGER,
    shadow_agreed INTEGER,
    shadow_p95_ms REAL,
    ts REAL NOT NULL,                    -- device clock of the heartbeat
    updated_at TEXT NOT NULL,            -- server clock, ISO-8601 UTC
    PRIMARY KEY (device_id, model, version)
) WITHOUT ROWID""",
    # Rows are read by device sets: clustered on the key, no second lookup per row.
    # Rollouts read one model's rows for a set of devices (the primary key serves that);
    # drift reads windows of one model version for a set of devices.
    'CREATE INDEX drift_windows_device_model ON drift_windows(device_id, model, version, "end", n)',
]


def _v2(db: Database) -> None:
    for statement in _V2:
        db.execute(statement)


MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [(1, _v1), (2, _v2)]
