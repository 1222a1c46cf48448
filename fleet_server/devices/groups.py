"""GroupService: named device groups (a device is in at most one group)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edgefleet.fleet_server.audit import Actor, AuditLog
from edgefleet.fleet_server.devices.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.fleet_server.storage import Store

GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_group_name(name: str) -> str:
    """Return ``name`` if it is a valid group name. Raises InvalidRequestError."""
    if not GROUP_RE.fullmatch(name):
        raise InvalidRequestError(
            f"invalid group name {name!r}: 1-64 of letters, digits, '.', '_', '-'"
        )
    return name


def _now() -> datetime:
    return datetime.now(UTC)


class GroupService:
    """Create, read, update and delete device groups. Every change is audited."""

    def __init__(
        self, store: Store, audit: AuditLog, *, clock: Callable[[], datetime] = _now
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock

    def list_groups(self, *, limit: int = 50, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Groups with their device counts, by name."""
        db = self._store.db
        rows = list(db.query(
            "SELECT g.name, g.description, g.created_at, COUNT(d.id) AS device_count"
            " FROM device_groups g LEFT JOIN devices d ON d.group_name = g.name"
            " GROUP BY g.name ORDER BY g.name LIMIT ? OFFSET ?", [limit, offset]))
        return rows, db["device_groups"].count

    def get_group(self, name: str) -> dict[str, Any]:
        """One group. Raises NotFoundError."""
        rows = list(self._store.db.query(
            "SELECT g.name, g.description, g.created_at, COUNT(d.id) AS device_count"
            " FROM device_groups g LEFT JOIN devices d ON d.group_name = g.name"
            " WHERE g.name = ? GROUP BY g.name", [name]))
        if not rows:
            raise NotFoundError(f"no device group named {name!r}")
        return rows[0]

    def create_group(self, name: str, actor: Actor, description: str = "") -> dict[str, Any]:
        """Create a group. Raises InvalidRequestError, ConflictError (exists)."""
        check_group_name(name)
        with self._store.transaction() as db:
            if db["device_groups"].count_where("name = ?", [name]):
                raise ConflictError(f"device group {name!r} already exists")
            row = {"name": name, "description": description,
                   "created_at": self._clock().isoformat()}
            db["device_groups"].insert(row)
            self._audit.record(actor, "device_group.create", "device_group", name, None, row)
        return self.get_group(name)

    def update_group(self, name: str, description: str, actor: Actor) -> dict[str, Any]:
        """Change a group's description. Raises NotFoundError."""
        with self._store.transaction() as db:
            before = self.get_group(name)
            db["device_groups"].update(name, {"description": description})
            after = self.get_group(name)
            self._audit.record(actor, "device_group.update", "device_group", name, before, after)
        return after

    def delete_group(self, name: str, actor: Actor) -> None:
        """Delete an empty, unreferenced group. Raises NotFoundError, ConflictError."""
        with self._store.transaction() as db:
            before = self.get_group(name)
            if before["device_count"]:
                raise ConflictError(f"device group {name!r} still has devices")
            if db["enrollment_tokens"].count_where("group_name = ?", [name]):
                raise ConflictError(f"enrollment tokens still refer to group {name!r}")
            db["device_groups"].delete(name)
            self._audit.record(actor, "device_group.delete", "device_group", name, before, None)
