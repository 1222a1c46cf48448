"""Model registry: models, immutable versions, stages, approval, compare, lineage.

Layers: ``stages``, ``compare``, ``lineage`` and ``metadata`` are pure; ``inspect`` reads
model files with the agent runtime; ``artifacts`` stores them content-addressed;
``service`` ties these to the Store and the AuditLog; ``api`` is the Flask blueprint
(mounted under /api/v1). The app's RegistryService is ``services.extras["registry"]``.
"""

from __future__ import annotations

from edgefleet.fleet_server.registry.api import create_blueprint, registry_service
from edgefleet.fleet_server.registry.schema import MIGRATIONS
from edgefleet.fleet_server.storage import Component

COMPONENT = Component("registry", MIGRATIONS)

__all__ = ["COMPONENT", "create_blueprint", "registry_service"]
