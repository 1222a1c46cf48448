"""Request-body validation with a small JSON-Schema subset (the same dicts go to OpenAPI).

Supported keywords: type (object, array, string, integer, number, boolean, null, or a
list of those), properties, required, additionalProperties (bool), items, enum,
minLength, maxLength, pattern (must match the whole string), minimum, maximum,
exclusiveMinimum / exclusiveMaximum (OpenAPI 3.0 booleans), minItems,
maxItems, minProperties, nullable (OpenAPI 3.0), format (ignored, documentation only).
``validate`` is pure; ``json_body`` reads the Flask request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flask import request

from edgefleet.fleet_server.api.errors import ApiError
from edgefleet.fleet_server.strict_json import has_lone_surrogates

Schema = Mapping[str, Any]

_TYPE_CHECKS: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: Schema, path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value``, as ``"<path>: <problem>"`` strings."""
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if schema.get("nullable") and value is None:
            return errors
        if not any(_TYPE_CHECKS[k](value) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: must be one of {list(schema['enum'])}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
            errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value <= low if schema.get("exclusiveMinimum") else value < low):
            errors.append(f"{path}: {'not above' if schema.get('exclusiveMinimum') else 'below'}"
                          f" {low}")
        if high is not None and (value >= high if schema.get("exclusiveMaximum")
                                 else value > high):
            errors.append(f"{path}: {'not below' if schema.get('exclusiveMaximum') else 'above'}"
                          f" {high}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors.extend(validate(item, schema["items"], f"{path}[{i}]"))
    if isinstance(value, dict):
        if len(value) < schema.get("minProperties", 0):
            errors.append(f"{path}: fewer than {schema['minProperties']} properties")
        props: Mapping[str, Schema] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}.{name}: required")
        for name, item in value.items():
            if name in props:
                errors.extend(validate(item, props[name], f"{path}.{name}"))
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}.{name}: unknown property")
    return errors


def json_body(schema: Schema | None = None) -> Any:
    """The request's JSON body, validated against ``schema`` when given.

    Raises:
        ApiError: 400 ``malformed_json`` (not JSON, not parseable, nested deeper than
            ``strict_json.MAX_DEPTH``, NaN / Infinity, unpaired surrogates) or
            ``validation_failed`` with the list of problems in ``details``.
    """
    if not request.is_json:
        raise ApiError(400, "malformed_json",
                       "expected a JSON body (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if body is None and request.get_data(cache=True).strip() != b"null":
        raise ApiError(400, "malformed_json",
                       "request body is not valid JSON (or nested too deeply, or holds "
                       "NaN / Infinity)")
    if has_lone_surrogates(body):
        raise ApiError(400, "malformed_json", "request body holds an unpaired surrogate")
    if schema is not None:
        problems = validate(body, schema)
        if problems:
            raise ApiError(400, "validation_failed", "request body is invalid", problems[:20])
    return body
