"""Ingestion routes (mounted under /api/v1):

* ``GET /ingest/stats`` (operator): counters (received, accepted, duplicates, ignored,
  rejected by reason, queue drops, write failures), gaps, devices, connection state
* ``GET /devices/<device_id>/telemetry`` (viewer): presence, inventory, last heartbeat,
  latency per model, seq accounting (duplicates, gaps, missing); 404 when nothing was
  ever ingested from the device
* ``GET /devices/<device_id>/predictions`` (viewer): sampled prediction records, newest
  first, paginated (``?limit=&offset=``, optional ``?model=``); 404 as above
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from edgefleet.fleet_server.api.errors import ApiError
from edgefleet.fleet_server.api.pagination import (
    PAGINATION_PARAMS,
    page_request,
    paginate,
    query_filter,
)
from edgefleet.fleet_server.api.routing import route
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.ingest.service import (
    EXTRAS_KEY,
    IngestionHandle,
    device_predictions,
    device_telemetry,
    ingest_stats,
    known_device,
)
from edgefleet.fleet_server.services import Services

TAG = ("ingest",)
_DEVICE_PARAM = {"name": "device_id", "in": "path", "required": True,
                 "schema": {"type": "string"}}
_MODEL_PARAM = {"name": "model", "in": "query", "required": False,
                "schema": {"type": "string"}}


def create_blueprint(services: Services) -> Blueprint:
    """The ingest blueprint."""
    bp = Blueprint("ingest", __name__)

    def handle() -> IngestionHandle | None:
        running = services.extras.get(EXTRAS_KEY)
        return running if isinstance(running, IngestionHandle) else None

    @route(bp, "/ingest/stats", ["GET"], role=Role.OPERATOR, tags=TAG,
           summary="Telemetry ingestion counters",
           responses={200: "Counters, rejected by reason, gaps, devices"})
    def stats() -> Any:
        return ingest_stats(services.store, handle())

    @route(bp, "/devices/<device_id>/telemetry", ["GET"], role=Role.VIEWER, tags=TAG,
           summary="A device's presence, heartbeat, latency per model and gaps",
           params=[_DEVICE_PARAM],
           responses={200: "Telemetry of the device", 404: "Nothing ingested from it"})
    def telemetry(device_id: str) -> Any:
        result = device_telemetry(services.store, device_id)
        if result is None:
            raise ApiError(404, "not_found", f"no telemetry from device {device_id!r}")
        return result

    @route(bp, "/devices/<device_id>/predictions", ["GET"], role=Role.VIEWER, tags=TAG,
           summary="Sampled prediction records of a device, newest first",
           params=[_DEVICE_PARAM, _MODEL_PARAM, *PAGINATION_PARAMS],
           responses={200: "A page of prediction records", 404: "Nothing ingested from it"})
    def predictions(device_id: str) -> Any:
        page = page_request()
        if not known_device(services.store, device_id):
            raise ApiError(404, "not_found", f"no telemetry from device {device_id!r}")
        items, total = device_predictions(services.store, device_id,
                                          model=query_filter("model"),
                                          limit=page.limit, offset=page.offset)
        return paginate(items, total, page)

    return bp
