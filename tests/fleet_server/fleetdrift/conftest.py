"""Fixtures of the fleet drift tests (helpers in support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.drift import ReferenceProfile
from edgefleet.fleet_server.fleetdrift import FleetDriftSettings
from tests.fleet_server.fleetdrift.support import DriftEnv, make_reference, open_env


@pytest.fixture(scope="session")
def reference() -> ReferenceProfile:
    return make_reference()


@pytest.fixture
def settings() -> FleetDriftSettings:
    return FleetDriftSettings()


@pytest.fixture
def env(tmp_path: Path, reference: ReferenceProfile,
        settings: FleetDriftSettings) -> Iterator[DriftEnv]:
    environment = open_env(tmp_path / "data", settings, fresh=True, reference=reference)
    yield environment
    environment.close()
