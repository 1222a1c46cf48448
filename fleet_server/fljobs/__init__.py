"""Federated training jobs: the fleet server runs a Flower SuperLink and turns rounds on
device cohorts into new, registered, quantized model versions.

Modules: ``spec`` (what an operator asks for, parsed; the Flower run config; pure),
``federation`` (the supervised SuperLink), ``service`` (jobs in the database, the worker
thread, schedules), ``runner`` (one job: Flower runs, every round a registry checkpoint,
resume from it, evaluation, registration), ``canary`` (the optional canary rollout of an
accepted result), ``evaluate`` (hold-out accuracy, quantization), ``api`` (the
blueprint), ``schema`` (tables). See docs/fljobs.md.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.fleet_server.fljobs import schema
from edgefleet.fleet_server.fljobs.api import create_blueprint
from edgefleet.fleet_server.fljobs.service import TICK_INTERVAL_S, FlJobService, fljob_service
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Component

COMPONENT = Component("fljobs", schema.MIGRATIONS)


def jobs(services: Services) -> list[tuple[str, float, Callable[[], None]]]:
    """Every 30 s: start due interval re-runs, resume jobs a restart interrupted."""

    def tick() -> None:
        fljob_service(services).tick()

    return [("fljobs.tick", TICK_INTERVAL_S, tick)]


__all__ = ["COMPONENT", "FlJobService", "create_blueprint", "fljob_service", "jobs"]
