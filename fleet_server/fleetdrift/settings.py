"""Settings of the fleet drift feature: one frozen dataclass with defaults.

The server configuration (``fleet_server/config.py``) does not carry these yet; until it
does, :func:`settings_for` reads optional ``drift_*`` attributes from the config when they
exist and otherwise uses the defaults. A test or an embedding program may install its
own settings with :func:`edgefleet.fleet_server.fleetdrift.service.install`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgefleet.agent.drift import DriftThresholds

#: Key of an optional webhook secret in ``services.extras`` (secrets are not config).
SECRET_EXTRA = "drift_webhook_secret"  # noqa: S105 - a key name, not a secret


@dataclass(frozen=True)
class FleetDriftSettings:
    """How the server evaluates fleet drift and where it sends alerts.

    Attributes:
        evaluation_interval_s: how often the evaluation job runs.
        max_windows_per_run: device windows one evaluation run takes at most (the rest
            waits for the next run).
        max_query_windows: device windows one ``GET /drift`` may merge.
        default_query_range_s: ``GET /drift`` looks this far back when ``since`` is absent.
        webhook_url: where alert events are POSTed; empty: no webhook.
        webhook_secret: HMAC-SHA256 key for the signature header; empty: unsigned.
        webhook_timeout_s: per-attempt HTTP timeout.
        webhook_attempts: attempts per event (1 + retries).
        webhook_backoff_s: first retry delay; doubles per attempt.
        webhook_queue_size: pending events kept in memory; more are dropped and counted.
        thresholds: the detector's thresholds (``k_on``, ``k_off``, ``alpha``, ...).
    """

    evaluation_interval_s: float = 60.0
    max_windows_per_run: int = 20_000
    max_query_windows: int = 20_000
    default_query_range_s: float = 24 * 3600.0
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 4
    webhook_backoff_s: float = 1.0
    webhook_queue_size: int = 1000
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def __post_init__(self) -> None:
        if not self.evaluation_interval_s > 0:
            raise ValueError("evaluation_interval_s must be positive")
        if self.max_windows_per_run < 1 or self.max_query_windows < 1:
            raise ValueError("window limits must be at least 1")
        if not self.webhook_timeout_s > 0 or self.webhook_backoff_s < 0:
            raise ValueError("webhook timeout must be positive and backoff non-negative")
        if self.webhook_attempts < 1 or self.webhook_queue_size < 1:
            raise ValueError("webhook attempts and queue size must be at least 1")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")


def settings_for(config: Any, extras: dict[str, Any]) -> FleetDriftSettings:
    """Settings from optional ``drift_*`` config attributes and the webhook secret extra."""
    return FleetDriftSettings(
        evaluation_interval_s=float(getattr(config, "drift_evaluation_interval_s", 60.0)),
        webhook_url=str(getattr(config, "drift_webhook_url", "") or ""),
        webhook_secret=str(extras.get(SECRET_EXTRA, "") or ""),
        webhook_timeout_s=float(getattr(config, "drift_webhook_timeout_s", 5.0)),
    )
