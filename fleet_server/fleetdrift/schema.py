"""Tables of the ``fleetdrift`` component (alert state per scope, alert history, cursor).

The device windows themselves live in ``drift_windows``, owned by ingestion; this
component only reads them.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

_V1 = [
    # How far the evaluation job has read drift_windows (by id).
    """CREATE TABLE fleetdrift_cursor (
    name TEXT PRIMARY KEY,
    last_window_id INTEGER NOT NULL
)""",
    # One persisted DetectorState per (model, version, scope kind, scope id).
    """CREATE TABLE fleetdrift_state (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    state TEXT NOT NULL,              -- DetectorState.to_dict() JSON
    last_status TEXT NOT NULL,        -- WindowStatus of the last evaluated window
    updated_at TEXT NOT NULL,
    PRIMARY KEY (model, version, scope_kind, scope_id)
)""",
    """CREATE TABLE fleetdrift_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    status TEXT NOT NULL,             -- open | closed
    opened_at TEXT NOT NULL,
    closed_at TEXT,
    drifted TEXT NOT NULL,            -- JSON list of the columns over threshold at opening
    open_report TEXT NOT NULL,        -- JSON report of the window that opened it
    close_report TEXT                 -- JSON report of the window that closed it
)""",
    "CREATE INDEX fleetdrift_alerts_status ON fleetdrift_alerts(status, id)",
    "CREATE INDEX fleetdrift_alerts_scope ON fleetdrift_alerts(model, version, scope_kind,"
    " scope_id)",
    # At most one open alert per scope.
    "CREATE UNIQUE INDEX fleetdrift_alerts_one_open ON fleetdrift_alerts(model, version,"
    " scope_kind, scope_id) WHERE status = 'open'",
]


def _v1(db: Database) -> None:
    # One statement at a time: executescript() would COMMIT the migration transaction.
    for statement in _V1:
        db.execute(statement)


MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [(1, _v1)]
