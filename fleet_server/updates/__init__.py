"""Signed over-the-air updates, server side: the Uptane-style image and director repositories.

Modules: ``keys`` (generate / store / load signing keys), ``layout`` (paths and allowed
names, pure), ``signed_repo`` (one TUF repository on disk), ``repository`` (the image
repository, per-device director repositories, assignment, expiry refresh, key rotation),
``api`` (public read-only HTTP serving with Range support). Signing and verification are
python-tuf's Metadata API with securesystemslib signers; nothing here invents a scheme.
See docs/security-model.md.

No database tables: the signed metadata on disk is the state.
"""

from __future__ import annotations

from edgefleet.fleet_server.storage import Component
from edgefleet.fleet_server.updates.api import (
    create_blueprint,
    keys_dir,
    repo_dir,
    updates_repository,
)

COMPONENT = Component("updates", [])

__all__ = ["COMPONENT", "create_blueprint", "keys_dir", "repo_dir", "updates_repository"]
