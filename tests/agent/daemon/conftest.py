"""Fixtures of the daemon tests (helpers live in support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.daemon.client import AgentClient
from edgefleet.agent.daemon.daemon import Daemon
from tests.agent.daemon.support import Models, build_models, daemon_config


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("daemon_models"))


@pytest.fixture
def daemon(tmp_path: Path, models: Models) -> Iterator[Daemon]:
    d = Daemon(daemon_config(tmp_path, models))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def client(daemon: Daemon) -> AgentClient:
    return AgentClient(daemon.url)
