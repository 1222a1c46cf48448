"""Update events reported by devices, and each device's current update state.

A device reports every state change and failure of its updater (``POST /device/events``).
Events are stored per device (the newest ``MAX_EVENTS_PER_DEVICE`` are kept); the device's
current update state is the last event's ``to`` (or its ``state`` when ``to`` is null).
Events are device-reported facts, not administrative changes: they are counted, not
audited one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 100
MAX_EVENTS_PER_DEVICE = 10_000
MAX_ERROR_CHARS = 4096
EVENTS_TABLE = "device_update_events"
STATUS_TABLE = "device_update_status"

_STATE = {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"}
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ts", "kind", "state"],
    "additionalProperties": False,
    "properties": {
        "ts": {"type": "number", "minimum": 0, "maximum": 1e11,
               "description": "Device clock, unix seconds"},
        "kind": {"type": "string", "enum": ["state", "error"]},
        "state": {**_STATE, "description": "The updater's state when the event happened"},
        "from": {**_STATE, "nullable": True},
        "to": {**_STATE, "nullable": True},
        "bundle": {"type": "string", "minLength": 1, "maxLength": 200, "nullable": True},
        "error": {"type": "string", "maxLength": MAX_ERROR_CHARS, "nullable": True},
    },
}
EVENTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["events"],
    "additionalProperties": False,
    "properties": {"events": {"type": "array", "items": EVENT_SCHEMA,
                              "maxItems": MAX_EVENTS_PER_REQUEST}},
}


def _now() -> datetime:
    return datetime.now(UTC)


def _event_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "ts": row["ts"], "received_at": row["received_at"],
            "kind": row["kind"], "state": row["state"], "from": row["from_state"],
            "to": row["to_state"], "bundle": row["bundle"], "error": row["error"]}


class UpdateEvents:
    """Stores device update events and answers for each device's update state."""

    def __init__(self, store: Store, *, clock: Callable[[], datetime] = _now,
                 keep_per_device: int = MAX_EVENTS_PER_DEVICE) -> None:
        self._store = store
        self._clock = clock
        self._keep = keep_per_device

    def record(self, device_id: str, events: Sequence[Mapping[str, Any]]) -> int:
        """Store ``events`` (already validated against ``EVENT_SCHEMA``) in order.

        Returns how many were stored.
        """
        if not events:
            return 0
        received = self._clock().replace(microsecond=0).isoformat()
        rows = [{"device_id": device_id, "received_at": received, "ts": float(e["ts"]),
                 "kind": e["kind"], "state": e["state"], "from_state": e.get("from"),
                 "to_state": e.get("to"), "bundle": e.get("bundle"), "error": e.get("error")}
                for e in events]
        last = rows[-1]
        errors = [r for r in rows if r["kind"] == "error"]
        bundles = [r["bundle"] for r in rows if r["bundle"] is not None]
        with self._store.transaction() as db:
            db[EVENTS_TABLE].insert_all(rows)
            db.execute(
                "DELETE FROM device_update_events WHERE device_id = ? AND id <= ("
                "SELECT id FROM device_update_events WHERE device_id = ?"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)", [device_id, device_id, self._keep])
            db.execute(
                "INSERT INTO device_update_status (device_id, state, bundle, last_event_ts,"
                " last_received_at, last_error, events_total, errors_total)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(device_id) DO UPDATE SET state = excluded.state,"
                " bundle = COALESCE(excluded.bundle, bundle),"
                " last_event_ts = excluded.last_event_ts,"
                " last_received_at = excluded.last_received_at,"
                " last_error = COALESCE(excluded.last_error, last_error),"
                " events_total = events_total + excluded.events_total,"
                " errors_total = errors_total + excluded.errors_total",
                [device_id, last["to_state"] or last["state"],
                 bundles[-1] if bundles else None, last["ts"], received,
                 errors[-1]["error"] if errors else None, len(rows), len(errors)])
        log.debug("device %s reported %d update event(s), now %s", device_id, len(rows),
                  last["to_state"] or last["state"])
        return len(rows)

    def status(self, device_id: str) -> dict[str, Any] | None:
        """The device's update status, or None before its first event."""
        rows = list(self._store.db[STATUS_TABLE].rows_where("device_id = ?", [device_id]))
        if not rows:
            return None
        row = rows[0]
        return {"state": row["state"], "bundle": row["bundle"],
                "last_event_ts": row["last_event_ts"],
                "last_received_at": row["last_received_at"], "last_error": row["last_error"],
                "events_total": row["events_total"], "errors_total": row["errors_total"]}

    def list_events(self, device_id: str, *, limit: int = 50,
                    offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The device's stored events, newest first, and how many are stored."""
        rows, total = self._store.select_page(EVENTS_TABLE, where={"device_id": device_id},
                                              order_by="id DESC", limit=limit, offset=offset)
        return [_event_view(r) for r in rows], total


def update_events(services: Services) -> UpdateEvents:
    """The app's UpdateEvents, kept in ``services.extras["updates.events"]``."""
    existing = services.extras.get("updates.events")
    if isinstance(existing, UpdateEvents):
        return existing
    events = UpdateEvents(services.store)
    services.extras["updates.events"] = events
    return events
