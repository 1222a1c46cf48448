"""Fixtures of the fleet server core tests (config, storage, audit, auth, api, server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_server.support import Env, make_env


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A fresh initialised data dir and app with a user + token per role."""
    environment = make_env(tmp_path / "data")
    yield environment
    environment.services.store.close()
