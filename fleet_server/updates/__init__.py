"""Signed over-the-air updates, server side: the Uptane-style image and director repositories.

Modules: ``keys`` (generate / store / load signing keys), ``layout`` (paths and allowed
names, pure), ``signed_repo`` (one TUF repository on disk), ``repository`` (the image
repository, per-device director repositories, assignment, expiry refresh, key rotation),
``api`` (public read-only HTTP serving with Range support), ``device_auth`` (signed device
requests), ``events`` (device-reported update events and state), ``device_api`` (device and
operator update routes), ``schema`` (this component's tables). Signing and verification are
python-tuf's Metadata API with securesystemslib signers; nothing here invents a scheme.
See docs/security-model.md.

The signed metadata on disk is the repositories' state; the database holds only what
devices report (update events and state) and the nonces of signed device requests.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Component
from edgefleet.fleet_server.updates import schema
from edgefleet.fleet_server.updates.api import (
    create_blueprint,
    keys_dir,
    repo_dir,
    updates_repository,
)
from edgefleet.fleet_server.updates.layout import RepoLayout

COMPONENT = Component("updates", schema.MIGRATIONS)
REFRESH_INTERVAL_S = 600.0  # far below the shortest expiry (1 day) and its refresh margin


def jobs(services: Services) -> list[tuple[str, float, Callable[[], None]]]:
    """The scheduler re-signs timestamp/snapshot (and director metadata) before they expire.

    Nothing happens before ``edgefleet keys init``: the repositories do not exist yet.
    """

    def refresh() -> None:
        if RepoLayout(repo_dir(services)).is_initialised():
            updates_repository(services).refresh_expiring()

    return [("updates.refresh_expiring", REFRESH_INTERVAL_S, refresh)]


__all__ = ["COMPONENT", "create_blueprint", "jobs", "keys_dir", "repo_dir",
           "updates_repository"]
