"""The rollouts JSON API (mounted under /api/v1).

Viewers read rollouts, their devices and decision logs; operators create and steer them.

* ``POST /rollouts``: create (body: ``spec.CREATE_SCHEMA``) -> 201 the rollout;
  400 inconsistent request, 404 unknown version or devices, 409 a device already in an
  active rollout, a version not in staging/production, or a release not published.
* ``GET /rollouts?status=&model=``: paginated, newest first.
* ``GET /rollouts/<id>``: waves, device state counts, the last gate values beside their
  thresholds, tick timings.
* ``GET /rollouts/<id>/devices?state=&wave=``: per device wave and state.
* ``GET /rollouts/<id>/decisions``: the decision log, oldest first.
* ``POST /rollouts/<id>/pause|resume|promote|abort|rollback`` (body ``{"reason"}``
  optional): 409 when the rollout's status does not allow it.
* ``POST /experiments``, ``GET /experiments``, ``GET /experiments/<id>``,
  ``POST /experiments/<id>/stop``: A/B tests (see ``experiments``).
"""

from __future__ import annotations

import re
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
from edgefleet.fleet_server.rollouts.errors import (
    RolloutConflict,
    RolloutInvalid,
    RolloutNotFound,
)
from edgefleet.fleet_server.rollouts.experiments import CREATE_SCHEMA as EXPERIMENT_SCHEMA
from edgefleet.fleet_server.rollouts.experiments import experiment_service
from edgefleet.fleet_server.rollouts.model import DeviceState, RolloutStatus
from edgefleet.fleet_server.rollouts.service import rollout_service
from edgefleet.fleet_server.rollouts.spec import CREATE_SCHEMA, SpecError, parse_spec
from edgefleet.fleet_server.services import Services

TAG = ("rollouts",)
_ID = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() takes "²" and "١"
_WAVE = re.compile(r"[0-9]{1,3}")
ACTIONS = ("pause", "resume", "promote", "abort", "rollback")
ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "maxLength": 500}},
}
LIST_FILTERS: list[dict[str, Any]] = [
    {"name": "status", "in": "query", "required": False,
     "schema": {"type": "string", "enum": [s.value for s in RolloutStatus]}},
    {"name": "model", "in": "query", "required": False,
     "schema": {"type": "string", "maxLength": 64}},
]
DEVICE_FILTERS: list[dict[str, Any]] = [
    {"name": "state", "in": "query", "required": False,
     "schema": {"type": "string", "enum": [s.value for s in DeviceState]}},
    {"name": "wave", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": 100}},
]


def _rollout_id(raw: str) -> int:
    # A plain <rollout_id> (no int converter): authentication runs before the id is
    # parsed, so anonymous callers get 401 for every path.
    if _ID.fullmatch(raw) is None:
        raise ApiError(404, "not_found", f"no rollout {raw!r}")
    return int(raw)


def create_blueprint(services: Services) -> Blueprint:
    bp = Blueprint("rollouts", __name__)

    @bp.errorhandler(RolloutNotFound)
    def _not_found(e: RolloutNotFound) -> Response:
        return error_response(404, "not_found", str(e))

    @bp.errorhandler(RolloutConflict)
    def _conflict(e: RolloutConflict) -> Response:
        return error_response(409, "conflict", str(e))

    @bp.errorhandler(RolloutInvalid)
    def _invalid(e: RolloutInvalid) -> Response:
        return error_response(404, "invalid_target", str(e))

    @route(bp, "/rollouts", ["POST"], role=Role.OPERATOR, request_schema=CREATE_SCHEMA,
           summary="Create a staged rollout of a released model version",
           responses={201: "The rollout, its first wave assigned",
                      400: "Inconsistent request",
                      404: "Unknown version or devices, or no device matches",
                      409: "Device already in an active rollout, or release not published",
                      503: "Update repositories not usable"},
           tags=TAG)
    def create_rollout() -> Any:
        try:
            spec = parse_spec(g.body)
        except SpecError as e:
            raise ApiError(400, "validation_failed", str(e)) from e
        return jsonify(rollout_service(services).create(spec, current_actor())), 201

    @route(bp, "/rollouts", ["GET"], role=Role.VIEWER, summary="Rollouts, newest first",
           responses={200: "Rollouts"}, params=[*PAGINATION_PARAMS, *LIST_FILTERS], tags=TAG)
    def list_rollouts() -> Any:
        page = page_request()
        items, total = rollout_service(services).list_rollouts(
            status=query_filter("status", [s.value for s in RolloutStatus]),
            model=request.args.get("model"), limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, "/rollouts/<rollout_id>", ["GET"], role=Role.VIEWER,
           summary="One rollout: waves, device states, gates beside thresholds, tick times",
           responses={200: "The rollout", 404: "No such rollout"}, tags=TAG)
    def get_rollout(rollout_id: str) -> Any:
        return jsonify(rollout_service(services).get(_rollout_id(rollout_id)))

    @route(bp, "/rollouts/<rollout_id>/devices", ["GET"], role=Role.VIEWER,
           summary="The devices of a rollout with their wave and state",
           responses={200: "Devices", 404: "No such rollout"},
           params=[*PAGINATION_PARAMS, *DEVICE_FILTERS], tags=TAG)
    def rollout_devices(rollout_id: str) -> Any:
        page = page_request()
        wave_raw = request.args.get("wave")
        if wave_raw is not None and _WAVE.fullmatch(wave_raw) is None:
            raise ApiError(400, "invalid_parameter", "wave must be an integer 0-999")
        items, total = rollout_service(services).devices(
            _rollout_id(rollout_id),
            state=query_filter("state", [s.value for s in DeviceState]),
            wave=None if wave_raw is None else int(wave_raw),
            limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, "/rollouts/<rollout_id>/decisions", ["GET"], role=Role.VIEWER,
           summary="The decision log of a rollout, oldest first",
           responses={200: "Decisions with gate values", 404: "No such rollout"},
           params=PAGINATION_PARAMS, tags=TAG)
    def rollout_decisions(rollout_id: str) -> Any:
        page = page_request()
        items, total = rollout_service(services).decisions(
            _rollout_id(rollout_id), limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    for action in ACTIONS:
        _action_route(bp, services, action)
    _experiment_routes(bp, services)
    return bp


def _experiment_routes(bp: Blueprint, services: Services) -> None:
    tag = ("experiments",)

    @route(bp, "/experiments", ["POST"], role=Role.OPERATOR,
           request_schema=EXPERIMENT_SCHEMA,
           summary="Start an A/B test: two versions on two randomized arms of devices",
           responses={201: "The experiment, both arms assigned",
                      404: "Unknown versions or devices, or too few devices",
                      409: "Device already busy, or a release not published"}, tags=tag)
    def create_experiment() -> Any:
        return jsonify(experiment_service(services).create(g.body, current_actor())), 201

    @route(bp, "/experiments", ["GET"], role=Role.VIEWER, summary="A/B tests, newest first",
           responses={200: "Experiments"}, params=PAGINATION_PARAMS, tags=tag)
    def list_experiments() -> Any:
        page = page_request()
        items, total = experiment_service(services).list_experiments(
            limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, "/experiments/<experiment_id>", ["GET"], role=Role.VIEWER,
           summary="An A/B test: arms, the metric per arm, the test, winner and confidence",
           responses={200: "The experiment", 404: "No such experiment"}, tags=tag)
    def get_experiment(experiment_id: str) -> Any:
        return jsonify(experiment_service(services).get(_rollout_id(experiment_id)))

    @route(bp, "/experiments/<experiment_id>/stop", ["POST"], role=Role.OPERATOR,
           request_schema=ACTION_SCHEMA, summary="Stop an A/B test (devices keep versions)",
           responses={200: "The experiment with its final result",
                      404: "No such experiment", 409: "Already stopped"}, tags=tag)
    def stop_experiment(experiment_id: str) -> Any:
        return jsonify(experiment_service(services).stop(
            _rollout_id(experiment_id), current_actor(), (g.body or {}).get("reason", "")))


def _action_route(bp: Blueprint, services: Services, action: str) -> None:
    summaries = {
        "pause": "Pause a running rollout",
        "resume": "Resume a paused rollout (the wave's bake time starts over)",
        "promote": "Skip the rest of the current wave's bake time",
        "abort": "End a rollout; devices keep their assignment",
        "rollback": "Assign every touched device its previous bundle and end the rollout",
    }

    def view(rollout_id: str) -> Any:
        svc = rollout_service(services)
        method = getattr(svc, action)
        return jsonify(method(_rollout_id(rollout_id), current_actor(),
                              (g.body or {}).get("reason", "")))

    view.__name__ = f"rollout_{action}"
    route(bp, f"/rollouts/<rollout_id>/{action}", ["POST"], role=Role.OPERATOR,
          request_schema=ACTION_SCHEMA, summary=summaries[action],
          responses={200: "The rollout", 404: "No such rollout",
                     409: "Not allowed in the rollout's status"}, tags=TAG)(view)
