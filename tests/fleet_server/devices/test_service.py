"""Devices, groups, tags, inventory and decommission, against a real SQLite store."""

from __future__ import annotations

import pytest

from edgefleet.fleet_server.devices.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from edgefleet.fleet_server.devices.model import DeviceStatus
from edgefleet.fleet_server.devices.service import DeviceService

from .conftest import OPERATOR, DeviceServices, new_public_key


def enroll(ds: DeviceServices, name: str, group: str | None = None) -> tuple[str, str]:
    _, secret = ds.enrollment.create_token(OPERATOR, group=group)
    result = ds.enrollment.enroll(secret, new_public_key(), name=name)
    return result.device_id, result.broker_password


def test_decommission_revokes_broker_credentials_and_disconnects(ds: DeviceServices):
    device_id, password = enroll(ds, "cam-1")
    assert ds.devices.verify_broker_password(device_id, password)
    after = ds.devices.decommission(device_id, OPERATOR, reason="stolen")
    assert after["status"] == "decommissioned" and after["decommission_reason"] == "stolen"
    assert not ds.devices.verify_broker_password(device_id, password)
    assert not ds.devices.is_active(device_id)
    assert ds.broker.dropped == [device_id]
    assert ds.store.db["devices"].get(device_id)["broker_password_hash"] is None
    with pytest.raises(ConflictError):
        ds.devices.decommission(device_id, OPERATOR)
    entry = ds.audit.list(action="device.decommission")[0][0]
    assert entry["before"]["status"] == "active"
    assert entry["after"]["broker_credentials"] == "revoked"


def test_failing_broker_hook_does_not_undo_decommission(ds: DeviceServices):
    def broken(_: str) -> None:
        raise RuntimeError("broker gone")

    svc = DeviceService(ds.store, ds.audit, on_revoke=broken)
    device_id, password = enroll(ds, "cam-1")
    svc.decommission(device_id, OPERATOR)
    assert not svc.verify_broker_password(device_id, password)


def test_groups_tags_and_filters(ds: DeviceServices):
    ds.groups.create_group("lobby", OPERATOR, "front door cameras")
    with pytest.raises(ConflictError):
        ds.groups.create_group("lobby", OPERATOR)
    with pytest.raises(InvalidRequestError):
        ds.groups.create_group("no spaces", OPERATOR)
    a, _ = enroll(ds, "cam-a", group="lobby")
    b, _ = enroll(ds, "cam-b")
    ds.devices.set_tags(a, ["floor=1", "vendor:acme"], OPERATOR)
    ds.devices.add_tag(b, "floor=1", OPERATOR)
    with pytest.raises(InvalidRequestError):
        ds.devices.add_tag(b, "bad tag", OPERATOR)
    assert [d["id"] for d in ds.devices.list_devices(group="lobby")[0]] == [a]
    assert {d["id"] for d in ds.devices.list_devices(tag="floor=1")[0]} == {a, b}
    assert ds.devices.list_devices(tag="vendor:acme")[1] == 1
    ds.devices.remove_tag(a, "vendor:acme", OPERATOR)
    with pytest.raises(NotFoundError):
        ds.devices.remove_tag(a, "vendor:acme", OPERATOR)
    assert ds.devices.list_tags() == ([{"tag": "floor=1", "device_count": 2}], 1)
    ds.devices.update_device(b, OPERATOR, name="cam-b2", group="lobby")
    assert ds.groups.get_group("lobby")["device_count"] == 2
    with pytest.raises(ConflictError):
        ds.groups.delete_group("lobby", OPERATOR)
    with pytest.raises(NotFoundError):
        ds.devices.update_device(b, OPERATOR, group="nowhere")
    ds.devices.decommission(a, OPERATOR)
    active, total = ds.devices.list_devices(status=DeviceStatus.ACTIVE)
    assert total == 1 and active[0]["name"] == "cam-b2"
    page, total = ds.devices.list_devices(limit=1, offset=1)
    assert total == 2 and len(page) == 1
    actions = {e["action"] for e in ds.audit.list(limit=100)[0]}
    assert {"device_group.create", "device.tags", "device.update", "device.decommission",
            "enrollment_token.create", "device.enroll"} <= actions


def test_inventory_merges_reported_state(ds: DeviceServices):
    device_id, _ = enroll(ds, "cam-1")
    ds.clock.advance(5)
    dev = ds.devices.update_inventory(device_id, {"models": {"churn": "1.0"}})
    assert dev["inventory"]["models"] == {"churn": "1.0"}
    assert dev["inventory"]["hardware"] == {}
    assert dev["inventory_updated_at"] == ds.clock.now.isoformat()
    with pytest.raises(NotFoundError):
        ds.devices.update_inventory("dev-nope", {})
