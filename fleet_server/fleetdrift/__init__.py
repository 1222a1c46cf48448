"""Fleet drift: device drift windows merged per device, group and fleet; alerts.

Layers: ``aggregate`` (reading ``drift_windows`` and exact merging), ``alerts`` (the pure
hysteresis decision per scope plus the alert records), ``webhook`` (background delivery
with HMAC signatures), ``service`` (the evaluation run and reports; the app's instance
is ``services.extras["fleetdrift"]``), ``api`` (the blueprint under /api/v1). The
evaluation runs as the scheduled job ``fleetdrift.evaluate``. See docs/fleet-drift.md.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.fleet_server.fleetdrift.api import create_blueprint
from edgefleet.fleet_server.fleetdrift.schema import MIGRATIONS
from edgefleet.fleet_server.fleetdrift.service import (
    FleetDriftService,
    fleetdrift_service,
    install,
)
from edgefleet.fleet_server.fleetdrift.settings import FleetDriftSettings
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Component

COMPONENT = Component("fleetdrift", MIGRATIONS)


def jobs(services: Services) -> list[tuple[str, float, Callable[[], None]]]:
    """The scheduled evaluation run (every ``evaluation_interval_s``)."""
    svc = fleetdrift_service(services)

    def evaluate() -> None:
        fleetdrift_service(services).evaluate()

    return [("fleetdrift.evaluate", svc.settings.evaluation_interval_s, evaluate)]


__all__ = ["COMPONENT", "FleetDriftService", "FleetDriftSettings", "create_blueprint",
           "fleetdrift_service", "install", "jobs"]
