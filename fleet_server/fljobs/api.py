"""The federated-jobs JSON API (mounted under /api/v1).

Viewers read jobs and their rounds; operators create and cancel jobs and register the
devices' Flower node keys.

* ``POST /fl/jobs``: create (body: ``spec.CREATE_SCHEMA``) -> 201 the job (queued);
  400 inconsistent request or unusable base model / hold-out set, 404 unknown model,
  version or device, 409 too few devices with a registered Flower node, or
  ``new_version`` already registered.
* ``GET /fl/jobs?status=&model=``: paginated, newest first (without rounds).
* ``GET /fl/jobs/<id>``: the job with its per-round metrics.
* ``POST /fl/jobs/<id>/cancel``: 409 when the job already ended.
* ``POST /fl/nodes`` (body ``{"device_id", "public_key"}``): register a device's SuperNode
  key on the server's SuperLink -> 201 node id, SuperLink address, CA certificate.
* ``POST /device/fl-node`` (device-signed, ``updates.device_auth``; body
  ``{"public_key"}``, EC P-384 PEM): the calling device registers its own SuperNode key
  -> 201 (registered, or replaced an older key: the old node is unregistered at the
  SuperLink) or 200 (the same key was registered already) with ``device_id``,
  ``node_id``, ``superlink``, ``ca_cert``; 401 ``device_auth_failed`` (unsigned, forged,
  unknown or decommissioned device). The device id comes from the signature only.
* ``GET /fl/federation``: the SuperLink address and CA certificate devices join with
  (``{"running": false}`` while no registration or job has started the SuperLink).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from edgefleet.fleet_server.api.errors import ApiError, error_response
from edgefleet.fleet_server.api.pagination import (
    PAGINATION_PARAMS,
    page_request,
    paginate,
    query_filter,
)
from edgefleet.fleet_server.api.routing import current_actor, route
from edgefleet.fleet_server.api.validation import json_body
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.devices.service import DECOMMISSION_LISTENERS_KEY
from edgefleet.fleet_server.fljobs.errors import (
    FederationUnavailable,
    JobConflict,
    JobInvalid,
    JobNotFound,
)
from edgefleet.fleet_server.fljobs.service import MAX_NODE_KEY_PEM, fljob_service
from edgefleet.fleet_server.fljobs.spec import CREATE_SCHEMA, JobStatus
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.updates.device_auth import HEADER_PARAMS, device_required

TAG = ("federated",)
NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["device_id", "public_key"],
    "additionalProperties": False,
    "properties": {
        "device_id": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "public_key": {"type": "string", "minLength": 1, "maxLength": 4096,
                       "description": "the SuperNode's EC public key, PEM "
                                      "SubjectPublicKeyInfo"},
    },
}
DEVICE_NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["public_key"],
    "additionalProperties": False,
    "properties": {
        "public_key": {"type": "string", "minLength": 100, "maxLength": MAX_NODE_KEY_PEM,
                       "description": "this device's SuperNode public key: EC P-384, PEM "
                                      "SubjectPublicKeyInfo"},
    },
}
CANCEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "maxLength": 500}},
}
LIST_FILTERS: list[dict[str, Any]] = [
    {"name": "status", "in": "query", "required": False,
     "schema": {"type": "string", "enum": [s.value for s in JobStatus]}},
    {"name": "model", "in": "query", "required": False,
     "schema": {"type": "string", "maxLength": 64}},
]


def _job_id(raw: str) -> int:
    # A plain <job_id> (no int converter): authentication runs before the id is parsed.
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(404, "not_found", f"no federated job {raw!r}")
    return int(raw)


def _forget_device(services: Services) -> Any:
    from edgefleet.fleet_server.audit import SYSTEM

    def listener(device_id: str) -> None:
        fljob_service(services).forget_device(device_id, SYSTEM)

    return listener


def create_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("fljobs", __name__)
    # A decommissioned device loses its Flower node (see devices.service).
    services.extras.setdefault(DECOMMISSION_LISTENERS_KEY, []).append(
        _forget_device(services))

    @bp.errorhandler(JobNotFound)
    def _not_found(e: JobNotFound) -> Response:
        return error_response(404, "not_found", str(e))

    @bp.errorhandler(JobInvalid)
    def _invalid(e: JobInvalid) -> Response:
        return error_response(400, "validation_failed", str(e))

    @bp.errorhandler(JobConflict)
    def _conflict(e: JobConflict) -> Response:
        return error_response(409, "conflict", str(e))

    @bp.errorhandler(FederationUnavailable)
    def _unavailable(e: FederationUnavailable) -> Response:
        return error_response(503, "federation_unavailable", str(e))

    @route(bp, "/fl/jobs", ["POST"], role=Role.OPERATOR, request_schema=CREATE_SCHEMA,
           summary="Create a federated training job from a registered base version",
           responses={201: "The job, queued",
                      400: "Inconsistent request, unusable base model or hold-out set",
                      404: "Unknown model, version or device",
                      409: "Too few devices with a registered Flower node, or the new "
                           "version exists"},
           tags=TAG)
    def create_job() -> Any:
        return jsonify(fljob_service(services).create(g.body, current_actor())), 201

    @route(bp, "/fl/jobs", ["GET"], role=Role.VIEWER, summary="Federated jobs, newest first",
           responses={200: "Jobs"}, params=[*PAGINATION_PARAMS, *LIST_FILTERS], tags=TAG)
    def list_jobs() -> Any:
        page = page_request()
        items, total = fljob_service(services).list_jobs(
            status=query_filter("status", [s.value for s in JobStatus]),
            model=request.args.get("model"), limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, "/fl/jobs/<job_id>", ["GET"], role=Role.VIEWER,
           summary="One federated job with its per-round metrics",
           responses={200: "The job", 404: "No such job"}, tags=TAG)
    def get_job(job_id: str) -> Any:
        return jsonify(fljob_service(services).get(_job_id(job_id)))

    @route(bp, "/fl/jobs/<job_id>/cancel", ["POST"], role=Role.OPERATOR,
           request_schema=CANCEL_SCHEMA, summary="Cancel a queued or running job",
           responses={200: "The job", 404: "No such job", 409: "The job already ended"},
           tags=TAG)
    def cancel_job(job_id: str) -> Any:
        return jsonify(fljob_service(services).cancel(_job_id(job_id), current_actor()))

    @route(bp, "/fl/nodes", ["POST"], role=Role.OPERATOR, request_schema=NODE_SCHEMA,
           summary="Register a device's Flower SuperNode key on the server's SuperLink",
           responses={201: "Node id, SuperLink address and CA certificate",
                      400: "Not an EC public key in PEM", 404: "Unknown device",
                      409: "Device already registered or key refused",
                      503: "SuperLink not available"},
           tags=TAG)
    def register_node() -> Any:
        body = g.body
        return jsonify(fljob_service(services).register_node(
            body["device_id"], body["public_key"], current_actor())), 201

    @route(bp, "/device/fl-node", ["POST"], role=None, params=HEADER_PARAMS,
           summary="Register this device's Flower SuperNode key (device-signed request); "
                   "what it needs to join",
           responses={200: "The same key was registered: node id, SuperLink address, CA "
                           "certificate",
                      201: "Key registered (an older key of the device is unregistered): "
                           "node id, SuperLink address, CA certificate",
                      400: "Not an EC P-384 public key in PEM",
                      401: "Device authentication failed (code device_auth_failed)",
                      409: "The SuperLink refused the key (in use by another node)",
                      503: "SuperLink not available"},
           tags=TAG)
    @device_required
    def register_device_node() -> Any:
        body = json_body(DEVICE_NODE_SCHEMA)
        answer, created = fljob_service(services).register_device_node(
            g.device_id, body["public_key"], g.actor)
        return jsonify(answer), 201 if created else 200

    register_device_node.openapi_operation = dataclasses.replace(
        register_device_node.openapi_operation,
        request_schema=DEVICE_NODE_SCHEMA)

    @route(bp, "/fl/federation", ["GET"], role=Role.VIEWER,
           summary="What devices need to join: SuperLink address and CA certificate "
                   "(running: false until the first node registration or job starts it)",
           responses={200: "Join information"}, tags=TAG)
    def federation_info() -> Any:
        return jsonify(fljob_service(services).federation.join_info(start=False))

    return bp
