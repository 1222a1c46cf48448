"""Device-side telemetry transport: envelope, durable outbox, MQTT session.

Layers (each module states its own rules):

* :mod:`.envelope` — the versioned JSON envelope and topic names of the MQTT contract.
  Pure and stdlib-only: the fleet server's ingestion imports it too.
* :mod:`.outbox` — SQLite (WAL) outbox: durable, bounded in bytes, ordered by ``seq``.
* :mod:`.mqtt` — the one thin adapter over paho-mqtt 2.x (callbacks never raise).
* :mod:`.client` — :class:`TelemetryClient`, tying the outbox to the connection.

Importing this package loads neither paho nor sqlite: the client names below are
resolved lazily, so ``edgefleet.agent.telemetry.envelope`` stays dependency-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgefleet.agent.telemetry.envelope import (
    Channel,
    Envelope,
    decode,
    encode,
    parse_topic,
    topic,
)
from edgefleet.agent.telemetry.errors import (
    BrokerConfigError,
    EnvelopeError,
    OutboxError,
    TelemetryError,
)

if TYPE_CHECKING:
    from edgefleet.agent.telemetry.client import TelemetryClient, TelemetryConfig
    from edgefleet.agent.telemetry.mqtt import BrokerConfig, Protocol
    from edgefleet.agent.telemetry.outbox import Outbox, OutboxConfig

_LAZY = {
    "TelemetryClient": "client",
    "TelemetryConfig": "client",
    "BrokerConfig": "mqtt",
    "Protocol": "mqtt",
    "Outbox": "outbox",
    "OutboxConfig": "outbox",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BrokerConfig",
    "BrokerConfigError",
    "Channel",
    "Envelope",
    "EnvelopeError",
    "Outbox",
    "OutboxConfig",
    "OutboxError",
    "Protocol",
    "TelemetryClient",
    "TelemetryConfig",
    "TelemetryError",
    "decode",
    "encode",
    "parse_topic",
    "topic",
]
