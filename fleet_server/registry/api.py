"""The registry's JSON API (mounted under /api/v1): thin views over RegistryService.

Roles: viewers read everything; operators upload, move stages and approve (the service
adds the four-eyes rule: nobody, admins included, approves their own upload, unless the
``approval_requires_second_person`` setting is off).
Uploads are ``multipart/form-data`` with parts ``file`` (the model), ``version`` and an
optional ``metadata`` part holding a JSON object (see docs/registry.md).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, send_file

from edgefleet.fleet_server import strict_json
from edgefleet.fleet_server.api.errors import ApiError, error_response
from edgefleet.fleet_server.api.pagination import (
    PAGINATION_PARAMS,
    page_request,
    paginate,
    query_filter,
)
from edgefleet.fleet_server.api.routing import current_actor, route
from edgefleet.fleet_server.auth.roles import Role
from edgefleet.fleet_server.registry.artifacts import ArtifactStore
from edgefleet.fleet_server.registry.checkpoints import CheckpointService
from edgefleet.fleet_server.registry.errors import (
    InvalidMetadataError,
    NotFoundError,
    RegistryError,
)
from edgefleet.fleet_server.registry.metadata import (
    LINEAGE_FIELDS,
    QUANTIZATIONS,
    UploadMetadata,
    has_lone_surrogates,
)
from edgefleet.fleet_server.registry.service import RegistryService
from edgefleet.fleet_server.registry.stages import Stage
from edgefleet.fleet_server.services import Services

TAG = ("registry",)
_NAME = "<name>"
_VERSION = "<name>/versions/<version>"

METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "description": {"type": "string", "maxLength": 4096},
        "quantization": {"type": "string", "enum": list(QUANTIZATIONS)},
        "metrics": {"type": "object"},
        "reference_profile": {"type": "object"},
        "parent": {"type": "string", "maxLength": 129,
                   "description": "'<version>' of the same model or '<model>@<version>'"},
        **{f: {"type": "string", "maxLength": 512} for f in LINEAGE_FIELDS},
    },
}
UPLOAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file", "version"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "the .onnx or .tflite model file"},
        "version": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"},
        "metadata": {"type": "string",
                     "description": "a JSON object: " + ", ".join(METADATA_SCHEMA["properties"])},
    },
}
STAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["stage"],
    "additionalProperties": False,
    "properties": {"stage": {"type": "string", "enum": [s.value for s in Stage]},
                   "reason": {"type": "string", "maxLength": 2000}},
}
APPROVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["reason"],
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 2000}},
}
VERSION_FILTERS: list[dict[str, Any]] = [
    {"name": "stage", "in": "query", "required": False,
     "schema": {"type": "string", "enum": [s.value for s in Stage]}},
    {"name": "framework", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["onnx", "tflite"]}},
    {"name": "quantization", "in": "query", "required": False,
     "schema": {"type": "string", "enum": list(QUANTIZATIONS)}},
]
COMPARE_PARAMS: list[dict[str, Any]] = [
    {"name": "with", "in": "query", "required": True,
     "description": "the other version: '<version>' of the same model or '<model>@<version>'",
     "schema": {"type": "string", "minLength": 1, "maxLength": 129}},
]


def registry_service(services: Services) -> RegistryService:
    """The app's RegistryService, created once and kept in ``services.extras["registry"]``."""
    existing = services.extras.get("registry")
    if isinstance(existing, RegistryService):
        return existing
    svc = RegistryService(
        services.store, services.audit,
        ArtifactStore(services.config.data_dir / "artifacts"),
        max_artifact_bytes=services.config.max_upload_bytes,
        approval_requires_second_person=services.config.approval_requires_second_person,
    )
    services.extras["registry"] = svc
    return svc


def checkpoint_service(services: Services) -> CheckpointService:
    """The app's CheckpointService (training checkpoints, same artifact store as versions),
    created once and kept in ``services.extras["registry.checkpoints"]``."""
    existing = services.extras.get("registry.checkpoints")
    if isinstance(existing, CheckpointService):
        return existing
    svc = CheckpointService(services.store, services.audit,
                            registry_service(services).artifacts)
    services.extras["registry.checkpoints"] = svc
    return svc


CHECKPOINT_FILTERS: list[dict[str, Any]] = [
    {"name": "run", "in": "query", "required": False,
     "description": "one training run, e.g. 'fljob:7'",
     "schema": {"type": "string", "maxLength": 128}},
]


def _metadata_from_form() -> UploadMetadata:
    raw = request.form.get("metadata")
    if raw is None or not raw.strip():
        return UploadMetadata()
    try:
        parsed = strict_json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidMetadataError(f"metadata is not valid JSON: {e.msg}") from e
    except ValueError as e:  # too deep, NaN / Infinity
        raise InvalidMetadataError(f"metadata is not valid JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise InvalidMetadataError("metadata must be a JSON object")
    return UploadMetadata.from_dict(parsed)


def _round(text: str) -> int:
    if not text.isdecimal() or len(text) > 7:
        raise NotFoundError(f"no checkpoint round {text!r}")
    return int(text)


def _other_version(model: str) -> tuple[str, str]:
    ref = request.args.get("with", "").strip()
    if not ref:
        raise ApiError(400, "invalid_parameter",
                       "with is required ('<version>' or '<model>@<version>')")
    other_model, sep, other_version = ref.rpartition("@")
    return (other_model if sep else model, other_version)


def create_blueprint(services: Services) -> Blueprint:
    """The registry routes bound to ``services`` (views are closures over the service)."""
    bp = Blueprint("registry", __name__)
    svc = registry_service(services)

    @bp.before_request
    def _refuse_unstorable_text() -> None:
        if request.is_json and has_lone_surrogates(request.get_json(silent=True)):
            raise ApiError(400, "validation_failed",
                           "request body holds an invalid (lone surrogate) character")

    @bp.errorhandler(RegistryError)
    def _registry_error(e: RegistryError) -> Response:
        return error_response(e.status, e.code, str(e))

    @route(bp, "/models", ["GET"], role=Role.VIEWER, summary="List models",
           responses={200: "Models with version counts"}, params=PAGINATION_PARAMS, tags=TAG)
    def list_models() -> Any:
        page = page_request()
        items, total = svc.list_models(limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, f"/models/{_NAME}", ["GET"], role=Role.VIEWER, summary="Get a model",
           responses={200: "The model"}, tags=TAG)
    def get_model(name: str) -> Any:
        return jsonify(svc.get_model(name))

    @route(bp, f"/models/{_NAME}/versions", ["GET"], role=Role.VIEWER,
           summary="List a model's versions (newest first)",
           responses={200: "Versions"}, params=[*PAGINATION_PARAMS, *VERSION_FILTERS], tags=TAG)
    def list_versions(name: str) -> Any:
        page = page_request()
        stage = query_filter("stage", [s.value for s in Stage])
        items, total = svc.list_versions(
            name, stage=Stage(stage) if stage else None,
            framework=query_filter("framework", ["onnx", "tflite"]),
            quantization=query_filter("quantization", QUANTIZATIONS),
            limit=page.limit, offset=page.offset,
        )
        return jsonify(paginate(items, total, page))

    @route(bp, f"/models/{_NAME}/versions", ["POST"], role=Role.OPERATOR,
           summary="Upload a new immutable model version (stage draft)",
           request_schema=UPLOAD_SCHEMA, request_content_type="multipart/form-data",
           upload=True,
           responses={201: "The registered version", 409: "This version already exists",
                      415: "Not a multipart/form-data request",
                      422: "The file is not a loadable ONNX / TFLite model"},
           tags=TAG)
    def upload_version(name: str) -> Any:
        if request.mimetype != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type",
                           "upload as multipart/form-data with parts file, version, metadata")
        file = request.files.get("file")
        version = request.form.get("version", "")
        if file is None:
            raise ApiError(400, "invalid_metadata", "the 'file' part is missing")
        if not version:
            raise ApiError(400, "invalid_metadata", "the 'version' part is missing")
        record = svc.upload(name, version, file.stream, _metadata_from_form(), current_actor(),
                            user_id=g.get("user_id"))
        return jsonify(record), 201

    @route(bp, f"/models/{_VERSION}", ["GET"], role=Role.VIEWER, summary="Get a version",
           responses={200: "The version record"}, tags=TAG)
    def get_version(name: str, version: str) -> Any:
        return jsonify(svc.get_version(name, version))

    @route(bp, f"/models/{_VERSION}/artifact", ["GET"], role=Role.VIEWER,
           summary="Download a version's model file",
           responses={200: "The model file (application/octet-stream)"}, tags=TAG)
    def download_artifact(name: str, version: str) -> Any:
        record = svc.get_version(name, version)
        path = svc.artifact_path(name, version)
        suffix = ".tflite" if record["framework"] == "tflite" else ".onnx"
        return send_file(path, mimetype="application/octet-stream", as_attachment=True,
                         download_name=f"{name}-{version}{suffix}")

    @route(bp, f"/models/{_VERSION}/stage", ["POST"], role=Role.OPERATOR,
           summary="Move a version to another stage (production needs an approval)",
           request_schema=STAGE_SCHEMA,
           responses={200: "The updated version",
                      409: "Transition not allowed, or approval missing"}, tags=TAG)
    def change_stage(name: str, version: str) -> Any:
        body = g.body
        record = svc.transition(name, version, Stage(body["stage"]), current_actor(),
                                reason=body.get("reason", ""))
        return jsonify(record)

    @route(bp, f"/models/{_VERSION}/approve", ["POST"], role=Role.OPERATOR,
           summary="Approve a staging version for production (who, when, why)",
           request_schema=APPROVE_SCHEMA,
           responses={200: "The approved version",
                      409: "Not in staging, or already approved"}, tags=TAG)
    def approve(name: str, version: str) -> Any:
        return jsonify(svc.approve(name, version, g.body["reason"], current_actor(),
                                   user_id=g.get("user_id")))

    @route(bp, f"/models/{_VERSION}/compare", ["GET"], role=Role.VIEWER,
           summary="Compare this version with another (metrics, size, signature)",
           params=COMPARE_PARAMS, responses={200: "The comparison"}, tags=TAG)
    def compare(name: str, version: str) -> Any:
        return jsonify(svc.compare((name, version), _other_version(name)))

    @route(bp, f"/models/{_VERSION}/lineage", ["GET"], role=Role.VIEWER,
           summary="Lineage graph of a version (nodes and edges)",
           responses={200: "{nodes, edges}"}, tags=TAG)
    def lineage(name: str, version: str) -> Any:
        return jsonify(svc.lineage(name, version))

    checkpoints = checkpoint_service(services)
    # no <int:...> converter: the round is parsed in the view (a plain placeholder keeps
    # the rule and its OpenAPI path the same text)
    _ckpt = f"{_NAME}/checkpoints/<run>/<round_no>"

    @route(bp, f"/models/{_NAME}/checkpoints", ["GET"], role=Role.VIEWER,
           summary="List a model's training checkpoints (newest first; never deployable)",
           responses={200: "Checkpoints"}, params=[*PAGINATION_PARAMS, *CHECKPOINT_FILTERS],
           tags=TAG)
    def list_checkpoints(name: str) -> Any:
        page = page_request()
        items, total = checkpoints.list(name, run=request.args.get("run") or None,
                                        limit=page.limit, offset=page.offset)
        return jsonify(paginate(items, total, page))

    @route(bp, f"/models/{_ckpt}", ["GET"], role=Role.VIEWER,
           summary="Get one training checkpoint (run, round)",
           responses={200: "The checkpoint record"}, tags=TAG)
    def get_checkpoint(name: str, run: str, round_no: str) -> Any:
        return jsonify(checkpoints.get(name, run, _round(round_no)))

    @route(bp, f"/models/{_ckpt}/artifact", ["GET"], role=Role.VIEWER,
           summary="Download a training checkpoint's model file",
           responses={200: "The model file (application/octet-stream)"}, tags=TAG)
    def download_checkpoint(name: str, run: str, round_no: str) -> Any:
        record = checkpoints.get(name, run, _round(round_no))
        suffix = ".tflite" if record["framework"] == "tflite" else ".onnx"
        safe_run = run.replace(":", "-")
        return send_file(checkpoints.path(record), mimetype="application/octet-stream",
                         as_attachment=True,
                         download_name=f"{name}-{safe_run}-r{int(record['round']):04d}"
                                       f"{suffix}")

    return bp
