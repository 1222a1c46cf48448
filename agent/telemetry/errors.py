"""The telemetry package's one exception hierarchy (stdlib only, imported by the server).

Split by whose fault it is: :class:`EnvelopeError` means a payload or topic is malformed
(the sender's fault, or a caller passing a bad body); :class:`OutboxError` means the
local store failed (disk, corruption); :class:`BrokerConfigError` means the enrollment
or broker settings are unusable.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Base of every error raised by ``edgefleet.agent.telemetry``."""


class EnvelopeError(TelemetryError, ValueError):
    """A payload, body, topic or device id violates the MQTT contract."""


class OutboxError(TelemetryError):
    """The durable outbox cannot store or read messages (disk full, corrupt file...)."""


class BrokerConfigError(TelemetryError, ValueError):
    """Broker URL, credentials or enrollment record are unusable."""
