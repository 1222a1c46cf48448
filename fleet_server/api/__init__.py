"""Flask plumbing shared by every feature's blueprint (mounted under ``/api/v1``).

Rules of this package:

* every view is registered through :func:`route`, which enforces authentication and the
  minimum role on the server and records the OpenAPI operation (``/api/v1/openapi.json``
  is built from those records, so an undocumented route cannot exist);
* every error leaves as ``{"error": {"code", "message", "details"}}`` (raise
  :class:`ApiError`; werkzeug errors and unexpected exceptions are converted too);
* lists return ``paginate(items, total, page_request())`` and take ``?limit=&offset=``
  plus their own filters (:func:`query_filter`).

Typical use in a feature::

    bp = Blueprint("things", __name__)

    @route(bp, "/things", ["GET"], role=Role.VIEWER, summary="List things",
           params=PAGINATION_PARAMS, responses={200: "A page of things"})
    def list_things():
        page = page_request()
        items, total = svc.list(limit=page.limit, offset=page.offset)
        return paginate(items, total, page)
"""

from __future__ import annotations

from edgefleet.fleet_server.api.errors import ApiError, error_response
from edgefleet.fleet_server.api.pagination import (
    PAGINATION_PARAMS,
    Page,
    list_response_schema,
    page_request,
    paginate,
    query_filter,
)
from edgefleet.fleet_server.api.routing import (
    CSRF_HEADER,
    JSON,
    Operation,
    authenticate,
    current_actor,
    route,
    services,
)
from edgefleet.fleet_server.api.validation import json_body, validate
from edgefleet.fleet_server.auth.roles import Role, Scope
from edgefleet.fleet_server.services import Services

API_PREFIX = "/api/v1"

__all__ = [
    "API_PREFIX",
    "CSRF_HEADER",
    "JSON",
    "PAGINATION_PARAMS",
    "ApiError",
    "Operation",
    "Page",
    "Role",
    "Scope",
    "Services",
    "authenticate",
    "current_actor",
    "error_response",
    "json_body",
    "list_response_schema",
    "page_request",
    "paginate",
    "query_filter",
    "route",
    "services",
    "validate",
]
