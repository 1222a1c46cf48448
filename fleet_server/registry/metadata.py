"""Validated upload metadata for a new model version. Pure."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.fleet_server.registry.errors import InvalidMetadataError
from edgefleet.fleet_server.strict_json import StrictJSONError, check_value, has_lone_surrogates

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
LINEAGE_FIELDS = ("data_digest", "training_run", "federated_round", "code_version")
#: Values of ``inspect.Quantization`` (kept here so this module stays import-light).
QUANTIZATIONS = ("none", "float16", "int8", "uint8", "dynamic-int8")
_KNOWN = {"description", "quantization", "metrics", "reference_profile", "parent", *LINEAGE_FIELDS}


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise InvalidMetadataError."""
    if not NAME_RE.fullmatch(name):
        raise InvalidMetadataError(
            f"invalid model name {name!r}: 1-64 of letters, digits, '.', '_', '-'"
        )
    return name


def check_version(version: str) -> str:
    """Return ``version`` if it is a valid version string, else raise InvalidMetadataError."""
    if not VERSION_RE.fullmatch(version):
        raise InvalidMetadataError(
            f"invalid version {version!r}: 1-64 of letters, digits, '.', '_', '+', '-'"
        )
    return version


@dataclass(frozen=True)
class UploadMetadata:
    """Everything about a version that is not read from the artifact itself.

    ``parent`` is ``"<version>"`` (same model) or ``"<model>@<version>"``.
    ``quantization`` overrides the detected value only when given.
    """

    description: str = ""
    quantization: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    reference_profile: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    lineage: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> UploadMetadata:
        """Validate a JSON object.

        Raises:
            InvalidMetadataError: unknown keys or wrong types.
        """
        if has_lone_surrogates(raw):
            raise InvalidMetadataError("metadata holds an invalid (lone surrogate) character")
        try:
            check_value(dict(raw))  # bounded nesting, no NaN / Infinity anywhere
        except StrictJSONError as e:
            raise InvalidMetadataError(f"metadata is not storable: {e}") from None
        unknown = set(raw) - _KNOWN
        if unknown:
            raise InvalidMetadataError(f"unknown metadata keys: {', '.join(sorted(unknown))}")
        for key in ("metrics", "reference_profile"):
            if not isinstance(raw.get(key, {}), dict):
                raise InvalidMetadataError(f"{key} must be a JSON object")
        for key in ("description", "quantization", "parent", *LINEAGE_FIELDS):
            value = raw.get(key)
            if value is not None and not isinstance(value, str | int):
                raise InvalidMetadataError(f"{key} must be a string")
        quant = raw.get("quantization")
        if quant not in (None, "") and quant not in QUANTIZATIONS:
            raise InvalidMetadataError(f"quantization must be one of {list(QUANTIZATIONS)}")
        metrics = dict(raw.get("metrics", {}))
        for key, value in metrics.items():
            if not isinstance(value, int | float | str | bool) and value is not None:
                raise InvalidMetadataError(f"metric {key!r} must be a number or string")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidMetadataError(f"metric {key!r} must be a finite number")
        return cls(
            description=str(raw.get("description") or ""),
            quantization=str(raw["quantization"]) if raw.get("quantization") else None,
            metrics=metrics,
            reference_profile=dict(raw.get("reference_profile", {})),
            parent=str(raw["parent"]) if raw.get("parent") else None,
            lineage={k: str(raw[k]) for k in LINEAGE_FIELDS if raw.get(k) not in (None, "")},
        )

    def parent_ref(self, model: str) -> tuple[str, str] | None:
        """``(model, version)`` of the parent, resolving the same-model shorthand."""
        if self.parent is None:
            return None
        parent_model, sep, parent_version = self.parent.rpartition("@")
        return (parent_model if sep else model, parent_version)
