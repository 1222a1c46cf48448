"""Devices: enrollment tokens, enrollment, groups, tags, inventory, decommission.

Layers: ``credentials`` and ``model`` are pure; ``enrollment``, ``groups`` and
``service`` hold the operations on the Store (each change audited); ``api`` is the
Flask blueprint (mounted under /api/v1). The broker authenticates devices through
``DeviceService.verify_broker_password`` (the app's instance is
``services.extras["devices"]``, see :func:`device_service`).
"""

from __future__ import annotations

from edgefleet.fleet_server.devices.api import create_blueprint
from edgefleet.fleet_server.devices.schema import MIGRATIONS
from edgefleet.fleet_server.devices.service import DeviceService, device_service
from edgefleet.fleet_server.storage import Component

COMPONENT = Component("devices", MIGRATIONS)

__all__ = ["COMPONENT", "DeviceService", "create_blueprint", "device_service"]
