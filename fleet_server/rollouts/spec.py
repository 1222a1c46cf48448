"""What an operator asks for when creating a rollout, parsed and checked (pure).

The API validates the JSON shape with :data:`CREATE_SCHEMA`; :func:`parse_spec` turns the
validated body into a frozen :class:`RolloutSpec` and checks what a schema cannot (wave
fractions increasing and ending at 1, one kind of device selector). ``to_json`` /
``from_json`` keep the spec in the ``rollouts.spec`` column.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.fleet_server.rollouts.model import (
    DEFAULT_BAKE_S,
    DEFAULT_MAX_EXTENSION_S,
    DEFAULT_WAVES,
    FailurePolicy,
    GateThresholds,
)

MAX_BAKE_S = 30 * 86_400.0
MAX_DEVICES_LISTED = 10_000
_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_VERSION = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"}
_TAG = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$"}
_RATE = {"type": "number", "minimum": 0, "maximum": 1}
_POSITIVE = {"type": "number", "minimum": 0, "exclusiveMinimum": True}

GATES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_install_failure_rate": {**_RATE, "nullable": True},
        "max_lost_rate": {**_RATE, "nullable": True},
        "lost_after_s": {**_POSITIVE, "maximum": MAX_BAKE_S},
        "min_reported_rate": _RATE,
        "max_latency_p95_ratio": {**_POSITIVE, "nullable": True},
        "max_output_psi": {**_POSITIVE, "nullable": True},
        "max_output_js": {**_POSITIVE, "maximum": 1, "nullable": True},
        "max_input_psi": {**_POSITIVE, "nullable": True},
        "min_predictions": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "max_accuracy_drop": {**_RATE, "nullable": True},
        "min_labels": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "min_shadow_agreement": {**_RATE, "nullable": True},
        "min_shadow_samples": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
    },
}
CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "version", "target"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
        "model": _NAME,
        "version": _VERSION,
        "from_version": {**_VERSION, "nullable": True,
                         "description": "null: whatever the devices run"},
        "target": {
            "type": "object",
            "additionalProperties": False,
            "description": "group and tags combine (a device must match all); devices is "
                           "an explicit list and excludes them; percent picks a random "
                           "share of the matching devices",
            "properties": {
                "group": _NAME,
                "tags": {"type": "array", "items": _TAG, "maxItems": 32},
                "devices": {"type": "array", "items": _NAME, "minItems": 1,
                            "maxItems": MAX_DEVICES_LISTED},
                "percent": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                            "maximum": 100},
            },
        },
        "waves": {"type": "array", "minItems": 1, "maxItems": 20,
                  "items": {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                            "maximum": 1},
                  "description": "cumulative share of the devices after each wave"},
        "bake_s": {"type": "number", "minimum": 0, "maximum": MAX_BAKE_S},
        "max_extension_s": {"type": "number", "minimum": 0, "maximum": MAX_BAKE_S},
        "on_failure": {"type": "string", "enum": [p.value for p in FailurePolicy]},
        "gates": GATES_SCHEMA,
        "shadow": {"type": "object", "additionalProperties": False,
                   "required": ["sample_rate"],
                   "properties": {"sample_rate": {**_RATE, "exclusiveMinimum": True}},
                   "description": "devices not yet in a wave run the candidate in shadow"},
    },
}


class SpecError(ValueError):
    """The rollout request is inconsistent (the message says how)."""


@dataclass(frozen=True)
class TargetSelector:
    """Which devices a rollout covers (see ``CREATE_SCHEMA``)."""

    group: str | None = None
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    percent: float = 100.0


@dataclass(frozen=True)
class RolloutSpec:
    """Everything an operator chose for one rollout."""

    model: str
    version: str
    target: TargetSelector
    name: str = ""
    from_version: str | None = None
    fractions: tuple[float, ...] = DEFAULT_WAVES
    bake_s: float = DEFAULT_BAKE_S
    max_extension_s: float = DEFAULT_MAX_EXTENSION_S
    on_failure: FailurePolicy = FailurePolicy.PAUSE
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    shadow_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["on_failure"] = self.on_failure.value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutSpec:
        target = data["target"]
        return cls(
            model=data["model"], version=data["version"], name=data.get("name", ""),
            target=TargetSelector(target.get("group"), tuple(target.get("tags", ())),
                                  tuple(target.get("devices", ())),
                                  float(target.get("percent", 100.0))),
            from_version=data.get("from_version"),
            fractions=tuple(float(f) for f in data["fractions"]),
            bake_s=float(data["bake_s"]), max_extension_s=float(data["max_extension_s"]),
            on_failure=FailurePolicy(data["on_failure"]),
            thresholds=GateThresholds(**data["thresholds"]),
            shadow_rate=data.get("shadow_rate"))


def parse_spec(body: Mapping[str, Any]) -> RolloutSpec:
    """The spec of a schema-validated create request.

    Raises:
        SpecError: wave fractions not strictly increasing or not ending at 1, devices
            combined with group/tags, a duplicate device, or a non-finite number.
    """
    target = body.get("target") or {}
    devices = tuple(target.get("devices", ()))
    if devices and (target.get("group") or target.get("tags")):
        raise SpecError("target: list devices, or select by group/tags, not both")
    if not devices and not target.get("group") and not target.get("tags"):
        raise SpecError("target: give a group, tags or a list of devices")
    if len(set(devices)) != len(devices):
        raise SpecError("target.devices lists a device twice")
    fractions = tuple(float(f) for f in body.get("waves", DEFAULT_WAVES))
    if any(b <= a for a, b in itertools.pairwise(fractions)):
        raise SpecError("waves must be strictly increasing cumulative fractions")
    if fractions[-1] != 1.0:
        raise SpecError("the last wave must be 1.0 (every device of the rollout)")
    gates = dict(body.get("gates") or {})
    numbers = [*fractions, *(v for v in gates.values() if isinstance(v, float))]
    if any(not math.isfinite(v) for v in numbers):
        raise SpecError("numbers must be finite")
    shadow = body.get("shadow")
    return RolloutSpec(
        model=body["model"], version=body["version"], name=body.get("name", ""),
        target=TargetSelector(target.get("group"), tuple(sorted(set(target.get("tags", ())))),
                              devices, float(target.get("percent", 100.0))),
        from_version=body.get("from_version"),
        fractions=fractions,
        bake_s=float(body.get("bake_s", DEFAULT_BAKE_S)),
        max_extension_s=float(body.get("max_extension_s", DEFAULT_MAX_EXTENSION_S)),
        on_failure=FailurePolicy(body.get("on_failure", FailurePolicy.PAUSE.value)),
        thresholds=dataclasses.replace(GateThresholds(), **gates),
        shadow_rate=float(shadow["sample_rate"]) if shadow else None)
