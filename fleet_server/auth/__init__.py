"""Users, roles, API tokens and console sessions.

Layers: ``roles`` and ``passwords`` are pure; ``users`` and ``tokens`` are the services
(every change audited in the same transaction); ``api`` is the blueprint mounted under
/api/v1 (login/logout/password/whoami, tokens, users). Route protection itself lives in
:func:`edgefleet.fleet_server.api.route`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.fleet_server.auth.roles import Role, Scope
from edgefleet.fleet_server.auth.schema import COMPONENT

if TYPE_CHECKING:
    from flask import Blueprint

    from edgefleet.fleet_server.services import Services


def create_blueprint(services: Services) -> Blueprint:
    """The auth routes, bound to ``services``."""
    # Imported late: the blueprint needs edgefleet.fleet_server.api, which imports us.
    from edgefleet.fleet_server.auth.api import create_blueprint as _create

    return _create(services)


__all__ = ["COMPONENT", "Role", "Scope", "create_blueprint"]
