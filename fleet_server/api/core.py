"""The platform's own routes: health, the OpenAPI document and the audit log.

Audit log access is operator and above: viewers see the current state of the fleet, while
the log also shows who changed what (before/after values, secrets redacted at write time).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app

from edgefleet.agent import agent_version
from edgefleet.fleet_server.api.errors import ApiError
from edgefleet.fleet_server.api.openapi import build_openapi
from edgefleet.fleet_server.api.pagination import (
    PAGINATION_PARAMS,
    page_request,
    paginate,
    query_filter,
)
from edgefleet.fleet_server.api.routing import route
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.services import Services


def _version() -> str:
    return str(agent_version())


def _string_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", "maxLength": 200}}


def _time_param(name: str, description: str) -> dict[str, Any]:
    param = _string_param(name, description)
    param["schema"] = {**param["schema"], "format": "date-time"}
    return param


AUDIT_PARAMS = [
    *PAGINATION_PARAMS,
    _string_param("actor_id", "Only changes by this user, token or device id"),
    _string_param("action", "Only this action, e.g. user.create"),
    _string_param("target_type", "Only changes to this kind of object, e.g. user"),
    _string_param("target_id", "Only changes to this object"),
    _time_param("since", "ISO-8601 time (UTC when no offset is given), inclusive"),
    _time_param("until", "ISO-8601 time (UTC when no offset is given), inclusive"),
]


def _iso_filter(name: str) -> str | None:
    value = query_filter(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        # OverflowError: e.g. 9999-12-31T23:59:59-01:00 is past datetime.max in UTC.
        return parsed.astimezone(UTC).replace(microsecond=0).isoformat()
    except (ValueError, OverflowError) as e:
        raise ApiError(400, "invalid_parameter",
                       f"{name} must be an ISO-8601 time within years 1-9999 UTC") from e


def create_blueprint(services: Services) -> Blueprint:
    """Health, OpenAPI and audit routes bound to ``services``."""
    bp = Blueprint("core", __name__)

    @route(bp, "/health", ["GET"], role=None, summary="Liveness and version",
           tags=["core"], responses={200: "The server is up"})
    def health() -> Any:
        services.store.db.execute("SELECT 1").fetchone()
        return {"status": "ok", "version": _version()}

    @route(bp, "/openapi.json", ["GET"], role=None, summary="This OpenAPI 3 document",
           tags=["core"], responses={200: "The OpenAPI document"})
    def openapi() -> Any:
        return build_openapi(current_app, _version())

    @route(bp, "/audit", ["GET"], role=Role.OPERATOR, summary="Read the audit log",
           params=AUDIT_PARAMS, tags=["audit"],
           responses={200: "A page of audit entries, newest first"})
    def audit() -> Any:
        page = page_request()
        items, total = services.audit.list(
            actor_id=query_filter("actor_id"), action=query_filter("action"),
            target_type=query_filter("target_type"), target_id=query_filter("target_id"),
            since=_iso_filter("since"), until=_iso_filter("until"),
            limit=page.limit, offset=page.offset,
        )
        return paginate(items, total, page)

    return bp
