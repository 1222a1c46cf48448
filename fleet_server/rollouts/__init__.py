"""Staged rollouts gated on model quality: canary waves, automatic pause or roll back.

Modules: ``model`` (the shared vocabulary: states, thresholds, observations, decisions),
``spec`` (what an operator asks for, parsed), ``waves`` (wave sizes and the random device
order, pure), ``policy`` (gates and the decision, pure), ``observe`` (observations from
what devices reported), ``abstats`` (significance tests for A/B comparisons, pure),
``service`` (database state and decisions), ``carry`` (signing what decisions imply, in
batches, outside the lock), ``experiments`` (A/B tests),
``api`` (the blueprint),
``schema`` (tables). See docs/rollouts.md.
"""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.fleet_server.rollouts import schema
from edgefleet.fleet_server.rollouts.api import create_blueprint
from edgefleet.fleet_server.rollouts.experiments import experiment_service
from edgefleet.fleet_server.rollouts.service import (
    PUBLISH_KEY,
    TICK_INTERVAL_S,
    rollout_service,
)
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Component

COMPONENT = Component("rollouts", schema.MIGRATIONS)


def jobs(services: Services) -> list[tuple[str, float, Callable[[], None]]]:
    """Every few seconds: evaluate running rollouts and finish interrupted assignments."""

    def tick() -> None:
        rollout_service(services).tick()
        experiments = experiment_service(services)
        for experiment_id in experiments.pending_work():  # interrupted by a crash
            experiments.carry_out(experiment_id)

    return [("rollouts.tick", TICK_INTERVAL_S, tick)]


__all__ = ["COMPONENT", "PUBLISH_KEY", "create_blueprint", "jobs", "rollout_service"]
