"""The fleet drift JSON API (mounted under /api/v1); viewers read everything.

* ``GET /drift?model=&version=&scope=device|group|fleet&id=&since=&until=``: the merged
  report of the scope's windows ending in ``[since, until)`` against the version's
  reference profile: per column PSI, JS, KS, z statistics, status and n.
* ``GET /drift/alerts?status=open|closed&model=&version=&scope=&id=``: alerts, newest
  first, paginated.
* ``GET /drift/alerts/<id>``: one alert with the reports that opened and closed it.

``since``/``until`` are seconds since the epoch or ISO-8601 times (UTC when no offset is
given); ``until`` defaults to now, ``since`` to ``until`` minus the settings'
``default_query_range_s``.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from edgefleet.fleet_server.api.errors import ApiError, error_response
from edgefleet.fleet_server.api.pagination import (
    PAGINATION_PARAMS,
    page_request,
    paginate,
    query_filter,
)
from edgefleet.fleet_server.api.routing import route
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.fleetdrift.aggregate import FLEET_ID, Scope, ScopeKind
from edgefleet.fleet_server.fleetdrift.alerts import AlertStatus
from edgefleet.fleet_server.fleetdrift.errors import InvalidQueryError, NoReferenceError
from edgefleet.fleet_server.fleetdrift.service import fleetdrift_service
from edgefleet.fleet_server.services import Services

TAG = ("drift",)
_SCOPES = [k.value for k in ScopeKind]
_STRING = {"type": "string", "minLength": 1, "maxLength": 128}
_TIME = {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]}

REPORT_PARAMS: list[dict[str, Any]] = [
    {"name": "model", "in": "query", "required": True, "schema": _STRING},
    {"name": "version", "in": "query", "required": True, "schema": _STRING},
    {"name": "scope", "in": "query", "required": False,
     "schema": {"type": "string", "enum": _SCOPES, "default": "fleet"}},
    {"name": "id", "in": "query", "required": False, "schema": _STRING,
     "description": "device id or group name (required for those scopes)"},
    {"name": "since", "in": "query", "required": False, "schema": _TIME,
     "description": "windows ending at or after this time"},
    {"name": "until", "in": "query", "required": False, "schema": _TIME,
     "description": "windows ending before this time (default: now)"},
]
ALERT_FILTERS: list[dict[str, Any]] = [
    {"name": "status", "in": "query", "required": False,
     "schema": {"type": "string", "enum": [s.value for s in AlertStatus]}},
    {"name": "model", "in": "query", "required": False, "schema": _STRING},
    {"name": "version", "in": "query", "required": False, "schema": _STRING},
    {"name": "scope", "in": "query", "required": False,
     "schema": {"type": "string", "enum": _SCOPES}},
    {"name": "id", "in": "query", "required": False, "schema": _STRING},
]


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", message)


def parse_time(raw: str, name: str) -> float:
    """Seconds since the epoch from a number or an ISO-8601 time (naive means UTC)."""
    try:
        value = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError as e:
            raise _bad(f"{name} must be seconds since the epoch or an ISO-8601 time") from e
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise _bad(f"{name} must be a finite, non-negative time")
    return value


def _required(name: str) -> str:
    value = request.args.get(name, "")
    if not value:
        raise _bad(f"{name} is required")
    return value


def _scope() -> Scope:
    kind = ScopeKind(query_filter("scope", _SCOPES) or ScopeKind.FLEET.value)
    scope_id = request.args.get("id", "")
    if kind is ScopeKind.FLEET:
        scope_id = FLEET_ID
    elif not scope_id:
        raise _bad(f"id is required for scope {kind.value}")
    return Scope(_required("model"), _required("version"), kind, scope_id)


def create_blueprint(services: Services) -> Blueprint:
    """The drift routes; the service is looked up per request (see ``install``)."""
    bp = Blueprint("fleetdrift", __name__)

    @bp.errorhandler(NoReferenceError)
    def _no_reference(e: NoReferenceError) -> Response:
        return error_response(404, "no_reference", str(e))

    @bp.errorhandler(InvalidQueryError)
    def _invalid_query(e: InvalidQueryError) -> Response:
        return error_response(400, "invalid_query", str(e))

    @route(bp, "/drift", ["GET"], role=Role.VIEWER,
           summary="Merged drift report of a device, group or the fleet over a time range",
           responses={200: "Window status and per column PSI, JS, KS, status and n",
                      404: "Unknown model version or no reference profile"},
           params=REPORT_PARAMS, tags=TAG)
    def drift_report() -> Any:
        svc = fleetdrift_service(services)
        scope = _scope()
        until_raw, since_raw = request.args.get("until"), request.args.get("since")
        until = parse_time(until_raw, "until") if until_raw else time.time()
        since = (parse_time(since_raw, "since") if since_raw
                 else max(0.0, until - svc.settings.default_query_range_s))
        return jsonify(svc.report(scope, since, until))

    @route(bp, "/drift/alerts", ["GET"], role=Role.VIEWER,
           summary="Drift alerts, newest first",
           responses={200: "Alerts"}, params=[*PAGINATION_PARAMS, *ALERT_FILTERS], tags=TAG)
    def list_alerts() -> Any:
        page = page_request()
        status = query_filter("status", [s.value for s in AlertStatus])
        kind = query_filter("scope", _SCOPES)
        items, total = fleetdrift_service(services).alerts.list(
            status=AlertStatus(status) if status else None,
            model=request.args.get("model"), version=request.args.get("version"),
            kind=ScopeKind(kind) if kind else None, scope_id=request.args.get("id"),
            limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    # A plain <alert_id> (no int converter): authentication runs before the id is parsed,
    # so anonymous callers get 401 for every path, as on every other route.
    @route(bp, "/drift/alerts/<alert_id>", ["GET"], role=Role.VIEWER,
           summary="One drift alert with its opening and closing reports",
           responses={200: "The alert", 404: "No such alert"}, tags=TAG)
    def get_alert(alert_id: str) -> Any:
        try:
            return jsonify(fleetdrift_service(services).alerts.get(int(alert_id)))
        except (KeyError, ValueError) as e:
            raise ApiError(404, "not_found", f"no drift alert {alert_id!r}") from e

    return bp
