"""``Services``: what every feature's blueprint and job gets (store, audit, config, ...).

Built once per app by ``create_app``; features may add their own service objects to
``extras`` under their feature name (for example ``extras["devices"]``) so that other parts
(the broker authenticator, scheduled jobs) can find them without importing Flask state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from edgefleet.fleet_server.audit import AuditLog
from edgefleet.fleet_server.auth.tokens import TokenService
from edgefleet.fleet_server.auth.users import UserService
from edgefleet.fleet_server.config import ServerConfig
from edgefleet.fleet_server.storage import Store


class BrokerControl(Protocol):
    """What features may ask of the running broker (the credential hook)."""

    def disconnect(self, username: str) -> None:
        """Drop every live connection of ``username`` (after its credentials were revoked)."""


class NoBrokerControl:
    """Used when no embedded broker runs (tests, external broker): nothing to drop.

    With an external broker, revoked device credentials take effect at its next
    authentication check.
    """

    def disconnect(self, username: str) -> None:
        """Do nothing."""


@dataclass
class Services:
    """Shared, long-lived objects of one server instance."""

    config: ServerConfig
    store: Store
    audit: AuditLog
    users: UserService
    tokens: TokenService
    broker: BrokerControl = field(default_factory=NoBrokerControl)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def broker_url(self) -> str:
        """The MQTT URL devices connect to (returned at enrollment)."""
        return self.config.broker_url
