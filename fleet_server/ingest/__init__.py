"""Fleet telemetry ingestion: device MQTT messages validated, deduplicated, stored.

Modules: ``bodies`` and ``pipeline`` (pure validation, dedup and gap accounting),
``writer`` (the queue + batched writer thread), ``subscriber`` (the paho-mqtt client),
``service`` (wiring: registry reference profiles, device inventory, ``start_ingestion``,
read queries), ``api`` (the blueprint), ``schema`` (tables, including ``drift_windows``
that the fleet-drift feature reads). See docs/ingest.md.

The server process starts ingestion with
``start_ingestion(services, broker_url, username, password)`` and stops it with the
returned handle's ``stop()``.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.fleet_server.ingest import schema
from edgefleet.fleet_server.ingest.api import create_blueprint
from edgefleet.fleet_server.ingest.service import IngestionHandle, start_ingestion
from edgefleet.fleet_server.ingest.writer import IngestConfig
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Component

COMPONENT = Component("ingest", schema.MIGRATIONS)
RETENTION_INTERVAL_S = 3600.0
EVENTS_KEEP_PER_DEVICE = 10_000


def jobs(services: Services) -> list[tuple[str, float, Callable[[], None]]]:
    """Hourly: keep the newest ``EVENTS_KEEP_PER_DEVICE`` ingested events per device
    (prediction samples are bounded per device at every write)."""

    def retention() -> None:
        with services.store.transaction() as db:
            db.execute(
                "DELETE FROM ingest_events WHERE id IN (SELECT id FROM (SELECT id, "
                "ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY id DESC) AS rn "
                "FROM ingest_events) WHERE rn > ?)", [EVENTS_KEEP_PER_DEVICE])

    return [("ingest.retention", RETENTION_INTERVAL_S, retention)]


__all__ = ["COMPONENT", "IngestConfig", "IngestionHandle", "create_blueprint", "jobs",
           "start_ingestion"]
