"""Closed sets and record shapes of the devices package. Pure."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from edgefleet.fleet_server.devices.errors import InvalidRequestError

TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$")


class DeviceStatus(StrEnum):
    """Administrative state of a device (connectivity comes from telemetry)."""

    ACTIVE = "active"
    DECOMMISSIONED = "decommissioned"


def check_tag(tag: str) -> str:
    """Return ``tag`` if valid. Raises InvalidRequestError."""
    if not TAG_RE.fullmatch(tag):
        raise InvalidRequestError(
            f"invalid tag {tag!r}: 1-64 of letters, digits and . _ : = -"
        )
    return tag


def device_view(row: Mapping[str, Any], tags: list[str]) -> dict[str, Any]:
    """The public form of a device row: no password hash, inventory decoded."""
    return {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "group": row["group_name"],
        "tags": sorted(tags),
        "key_fingerprint": row["key_fingerprint"],
        "public_key": row["public_key_pem"],
        "inventory": json.loads(row["inventory"] or "{}"),
        "inventory_updated_at": row["inventory_updated_at"],
        "enrolled_at": row["enrolled_at"],
        "decommissioned_at": row["decommissioned_at"],
        "decommission_reason": row["decommission_reason"],
    }
