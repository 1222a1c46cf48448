"""Tables of the updates component, as versioned migrations.

The signed repositories live on disk (the metadata is the state); the database holds only
what devices report and the nonces of signed device requests:

* ``device_request_nonces``: nonces of verified device requests, pruned once their
  timestamp left the acceptance window (see ``device_auth``);
* ``device_update_events``: every update event a device reported, per device;
* ``device_update_status``: per device, its current update state (the last event's ``to``
  or ``state``), last bundle named, and how many events / errors it reported.

No foreign keys to ``devices``: the updates component may be migrated before or without the
devices component; device existence is checked when a request is authenticated.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

_V1 = [
    """CREATE TABLE device_request_nonces (
    device_id TEXT NOT NULL,
    nonce TEXT NOT NULL,                 -- lower-case hex
    ts INTEGER NOT NULL,                 -- the request's timestamp (unix seconds)
    PRIMARY KEY (device_id, nonce)
)""",
    "CREATE INDEX device_request_nonces_ts ON device_request_nonces(ts)",
    """CREATE TABLE device_update_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    received_at TEXT NOT NULL,           -- server clock, ISO-8601 UTC
    ts REAL NOT NULL,                    -- device clock, unix seconds
    kind TEXT NOT NULL,                  -- state | error
    state TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    bundle TEXT,
    error TEXT
)""",
    "CREATE INDEX device_update_events_device ON device_update_events(device_id, id)",
    """CREATE TABLE device_update_status (
    device_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    bundle TEXT,
    last_event_ts REAL NOT NULL,
    last_received_at TEXT NOT NULL,
    last_error TEXT,
    events_total INTEGER NOT NULL DEFAULT 0,
    errors_total INTEGER NOT NULL DEFAULT 0
)""",
]


def _v1(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction.
    for statement in _V1:
        db.execute(statement)


MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [(1, _v1)]
