"""Fixtures of the telemetry tests (helpers live in support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.telemetry.mqtt import BrokerConfig
from tests.agent.telemetry.support import Collector, RestartableMosquitto


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RestartableMosquitto]:
    """A Mosquitto only this test uses; the test may stop() and start() it."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    broker = RestartableMosquitto(workdir)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def collector(mosquitto: object) -> Iterator[Collector]:
    c = Collector(mosquitto.host, mosquitto.port).start()  # type: ignore[attr-defined]
    yield c
    c.stop()


@pytest.fixture
def broker_config(mosquitto: object) -> BrokerConfig:
    return BrokerConfig.from_url(mosquitto.url)  # type: ignore[attr-defined]
