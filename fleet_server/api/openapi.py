"""Builds the OpenAPI 3.0 document from the app's URL map and the ``route`` records.

Pure apart from reading ``app.url_map``: every rule under the API prefix whose view was
registered through ``route`` becomes an operation; path converters become path
parameters; common error responses are added from what the route declares (auth → 401
and 403, a body → 400 and 413, path parameters → 404).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from edgefleet.fleet_server.api.routing import JSON, Operation

API_PREFIX = "/api/v1"
_CONVERTER = re.compile(r"<(?:(?P<conv>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"},
                                            "message": {"type": "string"},
                                            "details": {}}}},
}
_DEFAULT_TEXT = {
    400: "Malformed request or invalid parameters",
    401: "Not authenticated (missing, invalid, expired or revoked credentials)",
    403: "Authenticated but not allowed (role, scope, CSRF)",
    404: "Not found",
    413: "Request body too large",
}


def _path_and_params(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params: list[dict[str, Any]] = []

    def repl(m: re.Match[str]) -> str:
        conv = m.group("conv") or "string"
        schema: dict[str, Any] = {"type": "integer"} if conv == "int" else {"type": "string"}
        if conv == "int":
            schema["minimum"] = 0
        params.append({"name": m.group("name"), "in": "path", "required": True,
                       "schema": schema})
        return "{" + m.group("name") + "}"

    return _CONVERTER.sub(repl, rule), params


def _responses(op: Operation, has_path_params: bool, method: str) -> dict[str, Any]:
    codes: dict[int, str] = dict(op.responses)
    extra: list[int] = []
    if op.role is not None:
        extra += [401, 403]
    if op.request_schema is not None and method not in ("GET", "HEAD", "DELETE"):
        extra += [400, 413]
    if op.params:
        extra.append(400)
    if has_path_params:
        extra.append(404)
    for code in extra:
        codes.setdefault(code, _DEFAULT_TEXT[code])
    out: dict[str, Any] = {}
    for code in sorted(codes):
        entry: dict[str, Any] = {"description": codes[code]}
        if code >= 400:
            entry["content"] = {JSON: {"schema": _ERROR_REF}}
        out[str(code)] = entry
    return out


def _operation(op: Operation, method: str, path_params: list[dict[str, Any]],
               endpoint: str) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": f"{endpoint}.{method.lower()}",
        "summary": op.summary,
        "tags": list(op.tags),
        "responses": _responses(op, bool(path_params), method),
    }
    parameters = path_params + [dict(p) for p in op.params]
    if parameters:
        doc["parameters"] = parameters
    if op.role is None:
        doc["security"] = []
    else:
        doc["x-required-role"] = op.role.value
    if op.request_schema is not None and method not in ("GET", "HEAD", "DELETE"):
        doc["requestBody"] = {"required": True,
                              "content": {op.request_content_type: {"schema": op.request_schema}}}
    return doc


def build_openapi(app: Flask, version: str) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document for every ``route``-registered rule under /api/v1."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith(API_PREFIX):
            continue
        view = app.view_functions.get(rule.endpoint)
        op: Operation | None = getattr(view, "openapi_operation", None)
        if op is None:
            continue
        path, path_params = _path_and_params(rule.rule)
        item = paths.setdefault(path, {})
        for method in sorted(rule.methods or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            item[method.lower()] = _operation(op, method, path_params, rule.endpoint)
    return {
        "openapi": "3.0.3",
        "info": {"title": "edgefleet fleet server API", "version": version},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "API token (edgefleet server token create)"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "session",
                                  "description": "Console session; send X-CSRF-Token on writes"},
            },
        },
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
    }
