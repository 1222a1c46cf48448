"""Update routes for devices (signed requests) and for operators (assignment, state).

Device routes (``role=None`` + :func:`device_required`: a request signed with the device's
enrolled key, see ``device_auth``; every refusal is 401 ``device_auth_failed``):

* ``POST /device/events``: ``{"events": [...]}`` (at most 100) -> 202 ``{"accepted": n}``
* ``GET /device/assignment``: -> 200 ``{"target": name | null}``, a hint only: the device
  trusts nothing but the signed director and image metadata

Operator routes:

* ``PUT /devices/<device_id>/assignment`` (operator, audited ``update.assign``): body
  ``{"target": "<name>-<version>.tar"}`` or ``{"model": name, "version": v}``; the target
  must be listed by the image repository (404 ``unknown_target``) and the device enrolled
  (404) and active (409); -> 200 the director's target info
* ``GET /devices/<device_id>/update`` (viewer): the assignment, the reported update state
  and the device's events, newest first (paginated)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flask import Blueprint, g
from tuf.api.metadata import TargetFile

from edgefleet.fleet_server.api.errors import ApiError
from edgefleet.fleet_server.api.pagination import (
    PAGINATION_PARAMS,
    page_request,
    paginate,
)
from edgefleet.fleet_server.api.routing import current_actor, route
from edgefleet.fleet_server.api.validation import json_body
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.devices.errors import NotFoundError
from edgefleet.fleet_server.devices.model import DeviceStatus
from edgefleet.fleet_server.devices.service import device_service
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.updates.device_auth import HEADER_PARAMS, device_required
from edgefleet.fleet_server.updates.errors import (
    InvalidRequest,
    KeyMaterialError,
    RepositoryStateError,
    UnknownTargetError,
)
from edgefleet.fleet_server.updates.events import EVENTS_SCHEMA, update_events
from edgefleet.fleet_server.updates.layout import TARGET_NAME_RE, check_target_name
from edgefleet.fleet_server.updates.repository import Repository

TAG = ("updates",)
DEVICE_401 = "Device authentication failed (code device_auth_failed)"
_TARGET = {"type": "string", "pattern": TARGET_NAME_RE.pattern.strip("^$")}
_PART = {"type": "string", "pattern": r"[A-Za-z0-9][A-Za-z0-9._+-]{0,94}"}
ASSIGN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": 'Either {"target": name} or {"model": m, "version": v} '
                   "(target {model}-{version}.tar)",
    "properties": {"target": _TARGET, "model": _PART, "version": _PART},
}


def _document_body(view: Any, schema: dict[str, Any]) -> None:
    """Show ``schema`` as the request body in OpenAPI without ``route`` validating it before
    the device signature is checked (the view validates it itself, after authentication)."""
    view.openapi_operation = dataclasses.replace(view.openapi_operation, request_schema=schema)


def target_info(target: TargetFile) -> dict[str, Any]:
    """The JSON form of a director / image target."""
    return {"target": target.path, "length": target.length, "hashes": dict(target.hashes)}


def _target_name(body: dict[str, Any]) -> str:
    if "target" in body:
        if set(body) != {"target"}:
            raise ApiError(400, "validation_failed", "give either target or model + version")
        return str(body["target"])
    if set(body) != {"model", "version"}:
        raise ApiError(400, "validation_failed", "give either target or model + version")
    name = f"{body['model']}-{body['version']}.tar"
    try:
        return check_target_name(name)
    except InvalidRequest as e:
        raise ApiError(400, "validation_failed", str(e)) from e


def _unavailable(e: Exception) -> ApiError:
    return ApiError(503, "updates_unavailable", f"the update repositories are not usable: {e}")


def register_device_routes(bp: Blueprint, services: Services,
                           repo: Callable[[], Repository]) -> None:
    """Add the routes of the module docstring to ``bp``.

    ``repo`` is a zero-argument callable returning the app's :class:`Repository` (looked up
    per request: the keys may be created after the app).
    """

    def repository() -> Repository:
        try:
            return repo()
        except KeyMaterialError as e:
            raise _unavailable(e) from e

    @route(bp, "/device/events", ["POST"], role=None,
           summary="Report update events (device-signed request)",
           params=HEADER_PARAMS, tags=TAG,
           responses={202: "Events stored: {accepted: n}", 401: DEVICE_401})
    @device_required
    def post_events() -> Any:
        body = json_body(EVENTS_SCHEMA)
        accepted = update_events(services).record(g.device_id, body["events"])
        return {"accepted": accepted}, 202

    _document_body(post_events, EVENTS_SCHEMA)

    @route(bp, "/device/assignment", ["GET"], role=None,
           summary="This device's assigned bundle, as a hint (device-signed request)",
           params=HEADER_PARAMS, tags=TAG,
           responses={200: "{target: name or null}", 401: DEVICE_401,
                      503: "Repositories not usable"})
    @device_required
    def get_own_assignment() -> Any:
        try:
            assigned = repository().assignment(g.device_id)
        except (InvalidRequest, RepositoryStateError) as e:
            raise _unavailable(e) from e
        return {"target": assigned.path if assigned is not None else None}

    def _in_rollout(device_id: str) -> bool:
        """A device a rollout or experiment drives is not assigned by hand (only when the
        rollouts feature is installed: its tables exist)."""
        if not services.store.db["rollout_devices"].exists():
            return False
        from edgefleet.fleet_server.rollouts.service import busy_devices

        return bool(busy_devices(services.store.db, [device_id]))

    @route(bp, "/devices/<device_id>/assignment", ["PUT"], role=Role.OPERATOR,
           summary="Assign a released bundle to a device (director repository)",
           request_schema=ASSIGN_SCHEMA, tags=TAG,
           responses={200: "The assigned target", 404: "No such device or target",
                      409: "The device is decommissioned, or in an active rollout",
                      503: "Repositories not initialised or director key missing"})
    def put_assignment(device_id: str) -> Any:
        name = _target_name(g.body)
        try:
            device = device_service(services).get_device(device_id)
        except NotFoundError as e:
            raise ApiError(404, "not_found", f"no device {device_id!r}") from e
        if device["status"] != DeviceStatus.ACTIVE.value:
            raise ApiError(409, "device_not_active", f"device {device_id} is decommissioned")
        if _in_rollout(device_id):
            raise ApiError(409, "device_busy", f"device {device_id} is in an active rollout or "
                           "experiment: pause, abort or stop it first")
        repo_ = repository()
        try:
            if name not in repo_.targets():
                raise ApiError(404, "unknown_target",
                               f"the image repository does not list {name}")
            before = repo_.assignment(device_id)
            with services.store.transaction():
                # signed inside the transaction: when signing fails nothing is audited
                assigned = repo_.assign(device_id, name)
                services.audit.record(
                    current_actor(), "update.assign", "device", device_id,
                    {"target": before.path if before is not None else None},
                    target_info(assigned))
        except UnknownTargetError as e:
            raise ApiError(404, "unknown_target", str(e)) from e
        except InvalidRequest as e:
            raise ApiError(400, "validation_failed", str(e)) from e
        except (KeyMaterialError, RepositoryStateError) as e:
            raise _unavailable(e) from e
        return {"device_id": device_id, **target_info(assigned)}

    @route(bp, "/devices/<device_id>/update", ["GET"], role=Role.VIEWER,
           summary="A device's assignment, reported update state and update events",
           params=PAGINATION_PARAMS, tags=TAG,
           responses={200: "Assignment, state and events (newest first, paginated)",
                      404: "No such device", 503: "Repositories not usable"})
    def get_update(device_id: str) -> Any:
        page = page_request()
        try:
            device_service(services).get_device(device_id)
        except NotFoundError as e:
            raise ApiError(404, "not_found", f"no device {device_id!r}") from e
        try:
            assigned = repository().assignment(device_id)
        except InvalidRequest:
            assigned = None  # an enrolled id the repository cannot hold was never assigned
        except RepositoryStateError as e:
            raise _unavailable(e) from e
        events = update_events(services)
        status = events.status(device_id)
        items, total = events.list_events(device_id, limit=page.limit, offset=page.offset)
        return {
            "device_id": device_id,
            "assignment": target_info(assigned) if assigned is not None else None,
            "state": status["state"] if status else None,
            "status": status,
            "events": paginate(items, total, page),
        }
