"""The server's ``desired`` hint (a retained MQTT message), parsed strictly. Pure.

Body: ``{"model": str, "version": str, "target": str (TUF target name), "rollout": int |
null, "shadow": {"version": str, "target": str, "sample_rate": float} | null}``.

It is a hint only: the device trusts the signed update metadata, never this message.
The daemon uses it for one thing: when it names a target (or shadow target) other than
what is installed, the update agent checks the signed metadata now instead of at its
next interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.daemon.errors import DaemonError

MAX_TEXT = 200


class DesiredHintError(DaemonError, ValueError):
    """A ``desired`` body that does not have the documented shape."""


@dataclass(frozen=True)
class ShadowHint:
    version: str
    target: str
    sample_rate: float


@dataclass(frozen=True)
class DesiredHint:
    model: str
    version: str
    target: str
    rollout: int | None
    shadow: ShadowHint | None


def _text(body: Mapping[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise DesiredHintError(f"{where}{key}: must be a non-empty string, got {value!r:.80}")
    return value


def parse_desired(body: Any) -> DesiredHint:
    """Check and convert a ``desired`` body (extra keys are ignored: newer servers).

    Raises:
        DesiredHintError: a key is missing or of the wrong type.
    """
    if not isinstance(body, Mapping):
        raise DesiredHintError("desired: the body must be an object")
    rollout = body.get("rollout")
    if rollout is not None and (isinstance(rollout, bool) or not isinstance(rollout, int)):
        raise DesiredHintError(f"rollout: must be an integer or null, got {rollout!r:.80}")
    raw = body.get("shadow")
    shadow = None
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise DesiredHintError("shadow: must be an object or null")
        rate = raw.get("sample_rate")
        if (isinstance(rate, bool) or not isinstance(rate, int | float)
                or not math.isfinite(rate) or not 0.0 < rate <= 1.0):
            raise DesiredHintError(f"shadow.sample_rate: must be in (0, 1], got {rate!r:.80}")
        shadow = ShadowHint(_text(raw, "version", "shadow."), _text(raw, "target", "shadow."),
                            float(rate))
    return DesiredHint(_text(body, "model", ""), _text(body, "version", ""),
                       _text(body, "target", ""), rollout, shadow)
