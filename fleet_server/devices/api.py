"""The devices JSON API (mounted under /api/v1): enrollment, devices, groups, tags.

Roles: viewers read devices, groups and tags; operators manage enrollment tokens,
groups, tags and decommission devices. ``POST /enroll`` is public: the one-time
enrollment token in its body is the credential (401 unknown/forged, 409 already used,
410 expired or revoked).
"""

from __future__ import annotations

import json
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
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.devices.enrollment import (
    DEFAULT_TOKEN_TTL_S,
    MAX_TOKEN_TTL_S,
    EnrollmentService,
)
from edgefleet.fleet_server.devices.errors import DeviceError
from edgefleet.fleet_server.devices.groups import GroupService
from edgefleet.fleet_server.devices.model import DeviceStatus
from edgefleet.fleet_server.devices.service import device_service
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.strict_json import has_lone_surrogates

TAG = ("devices",)
_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_TAG_ITEM = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$"}

TOKEN_CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "ttl_s": {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_TTL_S,
                  "default": DEFAULT_TOKEN_TTL_S},
        "group": {**_NAME, "nullable": True},
        "note": {"type": "string", "maxLength": 500},
    },
}
ENROLL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["token", "public_key"],
    "additionalProperties": False,
    "properties": {
        "token": {"type": "string", "minLength": 1, "maxLength": 200},
        "public_key": {"type": "string", "minLength": 1, "maxLength": 1000,
                       "description": "Ed25519 public key: PEM or base64 of the raw 32 bytes"},
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
        "hardware": {"type": "object"},
    },
}
DEVICE_PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
        "group": {**_NAME, "nullable": True,
                  "description": "null removes the device from its group"},
    },
}
TAGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["tags"],
    "additionalProperties": False,
    "properties": {"tags": {"type": "array", "items": _TAG_ITEM, "maxItems": 64}},
}
DECOMMISSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "maxLength": 2000}},
}
GROUP_CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": _NAME, "description": {"type": "string", "maxLength": 2000}},
}
GROUP_PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["description"],
    "additionalProperties": False,
    "properties": {"description": {"type": "string", "maxLength": 2000}},
}
DEVICE_FILTERS: list[dict[str, Any]] = [
    {"name": "group", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "tag", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "status", "in": "query", "required": False,
     "schema": {"type": "string", "enum": [s.value for s in DeviceStatus]}},
]
TOKEN_FILTERS: list[dict[str, Any]] = [
    {"name": "active", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["true", "false"]},
     "description": "true: only unused, unrevoked, unexpired tokens"},
]


def update_roots(services: Services) -> dict[str, Any] | None:
    """The trusted root metadata of both update repositories, or None before ``keys init``.

    A device verifies every update against these roots (and the newer roots they sign),
    so they travel only over the enrollment answer, never as a later, unauthenticated hint.
    """
    from edgefleet.fleet_server.updates.layout import RepoLayout

    layout = RepoLayout(services.config.data_dir / "repo")
    if not layout.is_initialised():
        return None
    return {
        "image": json.loads((layout.image_metadata / "root.json").read_text(encoding="utf-8")),
        "director": json.loads((layout.director_root / "root.json").read_text(encoding="utf-8")),
    }


def enrollment_response(services: Services, enrollment: Any) -> dict[str, Any]:
    """What a newly enrolled device receives (the broker password appears only here).

    ``update_root`` holds the update repositories' root metadata, or null when the server
    has no update repositories yet (``edgefleet keys init`` was not run).
    """
    return {
        "device_id": enrollment.device_id,
        "group": enrollment.group_name,
        "broker": {
            "url": services.broker_url,
            "username": enrollment.broker_username,
            "password": enrollment.broker_password,
        },
        "update_root": update_roots(services),
    }


def create_blueprint(services: Services) -> Blueprint:
    """The devices routes bound to ``services``."""
    bp = Blueprint("devices", __name__)
    devices = device_service(services)
    enrollment = services.extras.setdefault(
        "device_enrollment", EnrollmentService(services.store, services.audit))
    groups = services.extras.setdefault(
        "device_groups", GroupService(services.store, services.audit))

    @bp.before_request
    def _refuse_unstorable_text() -> None:
        if request.is_json and has_lone_surrogates(request.get_json(silent=True)):
            raise ApiError(400, "validation_failed",
                           "request body holds an invalid (lone surrogate) character")

    @bp.errorhandler(DeviceError)
    def _device_error(e: DeviceError) -> Response:
        return error_response(e.status, e.code, str(e))

    # -- enrollment --------------------------------------------------------------------

    @route(bp, "/enroll", ["POST"], role=None,
           summary="Enroll a device with a one-time enrollment token",
           request_schema=ENROLL_SCHEMA,
           responses={201: "Device id, broker URL and credentials, update roots",
                      401: "Unknown or forged enrollment token",
                      409: "Token already used, or public key already enrolled",
                      410: "Token expired or revoked"}, tags=TAG)
    def enroll() -> Any:
        body = g.body
        result = enrollment.enroll(body["token"], body["public_key"],
                                   hardware=body.get("hardware"), name=body.get("name"))
        response = jsonify(enrollment_response(services, result))
        response.headers["Cache-Control"] = "no-store"
        return response, 201

    @route(bp, "/enrollment-tokens", ["POST"], role=Role.OPERATOR,
           summary="Create a one-time, expiring enrollment token (secret shown once)",
           request_schema=TOKEN_CREATE_SCHEMA,
           responses={201: "The token record and its secret",
                      404: "The group does not exist"}, tags=TAG)
    def create_token() -> Any:
        body = g.body
        record, secret = enrollment.create_token(
            current_actor(), ttl_s=body.get("ttl_s", DEFAULT_TOKEN_TTL_S),
            group=body.get("group"), note=body.get("note", ""))
        response = jsonify({**record, "token": secret})
        response.headers["Cache-Control"] = "no-store"
        return response, 201

    @route(bp, "/enrollment-tokens", ["GET"], role=Role.OPERATOR,
           summary="List enrollment tokens (never their secrets)",
           params=[*PAGINATION_PARAMS, *TOKEN_FILTERS], responses={200: "Tokens"}, tags=TAG)
    def list_tokens() -> Any:
        page = page_request()
        active = query_filter("active", ["true", "false"]) == "true"
        items, total = enrollment.list_tokens(active_only=active, limit=page.limit,
                                              offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, "/enrollment-tokens/<token_id>/revoke", ["POST"], role=Role.OPERATOR,
           summary="Revoke an unused enrollment token",
           responses={200: "The revoked token", 409: "The token was already used"}, tags=TAG)
    def revoke_token(token_id: str) -> Any:
        return jsonify(enrollment.revoke_token(token_id, current_actor()))

    # -- devices -------------------------------------------------------------------------

    @route(bp, "/devices", ["GET"], role=Role.VIEWER, summary="List devices",
           params=[*PAGINATION_PARAMS, *DEVICE_FILTERS], responses={200: "Devices"}, tags=TAG)
    def list_devices() -> Any:
        page = page_request()
        status = query_filter("status", [s.value for s in DeviceStatus])
        items, total = devices.list_devices(
            group=query_filter("group"), tag=query_filter("tag"),
            status=DeviceStatus(status) if status else None,
            limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, "/devices/<device_id>", ["GET"], role=Role.VIEWER, summary="Get a device",
           responses={200: "The device with its inventory"}, tags=TAG)
    def get_device(device_id: str) -> Any:
        return jsonify(devices.get_device(device_id))

    @route(bp, "/devices/<device_id>", ["PATCH"], role=Role.OPERATOR,
           summary="Rename a device or change its group", request_schema=DEVICE_PATCH_SCHEMA,
           responses={200: "The updated device"}, tags=TAG)
    def update_device(device_id: str) -> Any:
        body = g.body
        clear = "group" in body and body["group"] is None
        return jsonify(devices.update_device(
            device_id, current_actor(), name=body.get("name"), group=body.get("group"),
            clear_group=clear))

    @route(bp, "/devices/<device_id>/tags", ["PUT"], role=Role.OPERATOR,
           summary="Replace a device's tags", request_schema=TAGS_SCHEMA,
           responses={200: "The updated device"}, tags=TAG)
    def set_tags(device_id: str) -> Any:
        return jsonify(devices.set_tags(device_id, g.body["tags"], current_actor()))

    @route(bp, "/devices/<device_id>/decommission", ["POST"], role=Role.OPERATOR,
           summary="Decommission a device (revokes its broker credentials for good)",
           request_schema=DECOMMISSION_SCHEMA,
           responses={200: "The decommissioned device",
                      409: "Already decommissioned"}, tags=TAG)
    def decommission(device_id: str) -> Any:
        return jsonify(devices.decommission(device_id, current_actor(),
                                            reason=g.body.get("reason", "")))

    @route(bp, "/device-tags", ["GET"], role=Role.VIEWER,
           summary="Tags in use with their device counts", params=PAGINATION_PARAMS,
           responses={200: "Tags"}, tags=TAG)
    def list_tags() -> Any:
        page = page_request()
        items, total = devices.list_tags(limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    # -- groups --------------------------------------------------------------------------

    @route(bp, "/device-groups", ["GET"], role=Role.VIEWER, summary="List device groups",
           params=PAGINATION_PARAMS, responses={200: "Groups"}, tags=TAG)
    def list_groups() -> Any:
        page = page_request()
        items, total = groups.list_groups(limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, "/device-groups", ["POST"], role=Role.OPERATOR, summary="Create a device group",
           request_schema=GROUP_CREATE_SCHEMA,
           responses={201: "The group", 409: "The group exists"}, tags=TAG)
    def create_group() -> Any:
        body = g.body
        return jsonify(groups.create_group(body["name"], current_actor(),
                                           body.get("description", ""))), 201

    @route(bp, "/device-groups/<name>", ["GET"], role=Role.VIEWER, summary="Get a device group",
           responses={200: "The group"}, tags=TAG)
    def get_group(name: str) -> Any:
        return jsonify(groups.get_group(name))

    @route(bp, "/device-groups/<name>", ["PATCH"], role=Role.OPERATOR,
           summary="Change a group's description", request_schema=GROUP_PATCH_SCHEMA,
           responses={200: "The group"}, tags=TAG)
    def update_group(name: str) -> Any:
        return jsonify(groups.update_group(name, g.body["description"], current_actor()))

    @route(bp, "/device-groups/<name>", ["DELETE"], role=Role.OPERATOR,
           summary="Delete an empty device group",
           responses={204: "Deleted", 409: "The group still has devices or tokens"}, tags=TAG)
    def delete_group(name: str) -> Any:
        groups.delete_group(name, current_actor())
        return "", 204

    return bp
