"""DeviceService: inventory, group and tag assignment, decommission, broker credentials."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from edgefleet.fleet_server.audit import Actor, AuditLog
from edgefleet.fleet_server.devices.credentials import secret_matches
from edgefleet.fleet_server.devices.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.fleet_server.devices.groups import check_group_name
from edgefleet.fleet_server.devices.model import DeviceStatus, check_tag, device_view
from edgefleet.fleet_server.storage import Store

if TYPE_CHECKING:
    from edgefleet.fleet_server.services import Services

log = logging.getLogger(__name__)

#: Called with a device id after its credentials are revoked (e.g. to disconnect it
#: from the broker). Failures are logged, never undo the decommission.
RevocationHook = Callable[[str], None]


def _now() -> datetime:
    return datetime.now(UTC)


class DeviceService:
    """Reads and changes enrolled devices. Every administrative change is audited."""

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        *,
        clock: Callable[[], datetime] = _now,
        on_revoke: RevocationHook | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._on_revoke = on_revoke

    # -- reads -------------------------------------------------------------------

    def list_devices(
        self,
        *,
        group: str | None = None,
        tag: str | None = None,
        status: DeviceStatus | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Devices matching every given filter, by enrollment time."""
        clauses: list[str] = []
        args: list[Any] = []
        if group is not None:
            clauses.append("group_name = ?")
            args.append(group)
        if status is not None:
            clauses.append("status = ?")
            args.append(status.value)
        if tag is not None:
            clauses.append("id IN (SELECT device_id FROM device_tags WHERE tag = ?)")
            args.append(tag)
        where = " AND ".join(clauses) or None
        table = self._store.db["devices"]
        total = table.count_where(where, args) if where else table.count
        rows = list(table.rows_where(where, args, order_by="enrolled_at, id",
                                     limit=limit, offset=offset))
        return [device_view(r, self._tags(r["id"])) for r in rows], total

    def get_device(self, device_id: str) -> dict[str, Any]:
        """One device. Raises NotFoundError."""
        return device_view(self._row(device_id), self._tags(device_id))

    def list_tags(self, *, limit: int = 500, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Tags in use with their device counts, by tag, and the number of distinct tags."""
        db = self._store.db
        total = int(db.execute("SELECT COUNT(DISTINCT tag) FROM device_tags").fetchone()[0])
        rows = list(db.query(
            "SELECT tag, COUNT(*) AS device_count FROM device_tags GROUP BY tag ORDER BY tag"
            " LIMIT ? OFFSET ?", [limit, offset]))
        return rows, total

    def verify_broker_password(self, device_id: str, password: str) -> bool:
        """True only for an active device whose broker password matches."""
        rows = list(self._store.db["devices"].rows_where("id = ?", [device_id]))
        if not rows or rows[0]["status"] != DeviceStatus.ACTIVE.value:
            return False
        return secret_matches(password, rows[0]["broker_password_hash"])

    def mosquitto_entries(self) -> list[tuple[str, str]]:
        """``(device_id, $7$ hash)`` of every active device, for Mosquitto's password file.

        Devices enrolled before these hashes were stored have none and are left out (they
        need new broker credentials before they can use Mosquitto).
        """
        rows = self._store.db.execute(
            "SELECT id, broker_mosquitto_hash FROM devices WHERE status = ? AND "
            "broker_mosquitto_hash IS NOT NULL ORDER BY id", [DeviceStatus.ACTIVE.value])
        return [(str(r[0]), str(r[1])) for r in rows.fetchall()]

    def is_active(self, device_id: str) -> bool:
        """Whether ``device_id`` is enrolled and not decommissioned."""
        return bool(self._store.db["devices"].count_where(
            "id = ? AND status = ?", [device_id, DeviceStatus.ACTIVE.value]))

    # -- writes ------------------------------------------------------------------

    def update_device(
        self,
        device_id: str,
        actor: Actor,
        *,
        name: str | None = None,
        group: str | None = None,
        clear_group: bool = False,
    ) -> dict[str, Any]:
        """Rename a device and/or move it to another group (or none with ``clear_group``).

        Raises:
            NotFoundError (device or group), InvalidRequestError.
        """
        changes: dict[str, Any] = {}
        if name is not None:
            if not name.strip() or len(name) > 128:
                raise InvalidRequestError("name must be 1-128 characters")
            changes["name"] = name.strip()
        if clear_group:
            changes["group_name"] = None
        elif group is not None:
            changes["group_name"] = check_group_name(group)
        with self._store.transaction() as db:
            before = self.get_device(device_id)
            if changes.get("group_name") and not db["device_groups"].count_where(
                "name = ?", [group]
            ):
                raise NotFoundError(f"no device group named {group!r}")
            if changes:
                db["devices"].update(device_id, changes)
            after = self.get_device(device_id)
            if changes:
                self._audit.record(actor, "device.update", "device", device_id,
                                   _audit_view(before), _audit_view(after))
        return after

    def set_tags(self, device_id: str, tags: list[str], actor: Actor) -> dict[str, Any]:
        """Replace a device's tags. Raises NotFoundError, InvalidRequestError."""
        wanted = sorted({check_tag(t) for t in tags})
        with self._store.transaction() as db:
            before = self.get_device(device_id)
            db.execute("DELETE FROM device_tags WHERE device_id = ?", [device_id])
            if wanted:
                db["device_tags"].insert_all({"device_id": device_id, "tag": t} for t in wanted)
            after = self.get_device(device_id)
            self._audit.record(actor, "device.tags", "device", device_id,
                               {"tags": before["tags"]}, {"tags": after["tags"]})
        return after

    def add_tag(self, device_id: str, tag: str, actor: Actor) -> dict[str, Any]:
        """Add one tag (idempotent)."""
        current = self.get_device(device_id)["tags"]
        return self.set_tags(device_id, [*current, tag], actor)

    def remove_tag(self, device_id: str, tag: str, actor: Actor) -> dict[str, Any]:
        """Remove one tag. Raises NotFoundError when the device does not have it."""
        current = self.get_device(device_id)["tags"]
        if tag not in current:
            raise NotFoundError(f"device {device_id} has no tag {tag!r}")
        return self.set_tags(device_id, [t for t in current if t != tag], actor)

    def update_inventory(self, device_id: str, inventory: Mapping[str, Any]) -> dict[str, Any]:
        """Merge telemetry-reported inventory into the device's (top-level keys replace).

        Not audited: this is device-reported state, not an administrative change.
        """
        with self._store.transaction() as db:
            row = self._row(device_id)
            merged = {**json.loads(row["inventory"] or "{}"), **dict(inventory)}
            db["devices"].update(device_id, {
                "inventory": json.dumps(merged, default=str),
                "inventory_updated_at": self._clock().isoformat(),
            })
        return self.get_device(device_id)

    def decommission(self, device_id: str, actor: Actor, reason: str = "") -> dict[str, Any]:
        """Retire a device: revoke its broker credentials for good.

        Raises:
            NotFoundError, ConflictError (already decommissioned).
        """
        with self._store.transaction() as db:
            before = self.get_device(device_id)
            if before["status"] == DeviceStatus.DECOMMISSIONED.value:
                raise ConflictError(f"device {device_id} is already decommissioned")
            db["devices"].update(device_id, {
                "status": DeviceStatus.DECOMMISSIONED.value,
                "broker_password_hash": None,
                "broker_mosquitto_hash": None,
                "decommissioned_at": self._clock().isoformat(),
                "decommission_reason": reason,
            })
            after = self.get_device(device_id)
            self._audit.record(actor, "device.decommission", "device", device_id,
                               _audit_view(before), {**_audit_view(after),
                                                     "broker_credentials": "revoked"})
        if self._on_revoke is not None:
            try:
                self._on_revoke(device_id)
            except Exception:  # the revocation itself is already committed
                log.exception("revocation hook failed for device %s", device_id)
        log.info("device %s decommissioned", device_id)
        return after

    # -- helpers -------------------------------------------------------------------

    def _row(self, device_id: str) -> dict[str, Any]:
        rows = list(self._store.db["devices"].rows_where("id = ?", [device_id]))
        if not rows:
            raise NotFoundError(f"no device {device_id!r}")
        return rows[0]

    def _tags(self, device_id: str) -> list[str]:
        return [r["tag"] for r in self._store.db["device_tags"].rows_where(
            "device_id = ?", [device_id], select="tag")]


def _audit_view(device: Mapping[str, Any]) -> dict[str, Any]:
    return {k: device[k] for k in ("id", "name", "status", "group", "tags",
                                   "decommissioned_at", "decommission_reason")}


#: ``services.extras`` key of a list of ``Callable[[str], None]`` that other features
#: append to: each is called with the device id after a decommission (errors are logged).
DECOMMISSION_LISTENERS_KEY = "devices.decommission_listeners"


def device_service(services: Services) -> DeviceService:
    """The app's DeviceService, created once and kept in ``services.extras["devices"]``.

    Decommissioning through it calls ``services.broker.disconnect(device_id)`` on whatever
    broker control ``services.broker`` holds at that moment, then every listener in
    ``services.extras[DECOMMISSION_LISTENERS_KEY]``.
    """
    existing = services.extras.get("devices")
    if isinstance(existing, DeviceService):
        return existing
    def revoke(device_id: str) -> None:
        # Looked up at call time: the server may attach its broker after the app exists.
        try:
            services.broker.disconnect(device_id)
        finally:
            for listener in list(services.extras.get(DECOMMISSION_LISTENERS_KEY, ())):
                try:
                    listener(device_id)
                except Exception:
                    log.exception("decommission listener failed for device %s", device_id)

    svc = DeviceService(services.store, services.audit, on_revoke=revoke)
    services.extras["devices"] = svc
    return svc
