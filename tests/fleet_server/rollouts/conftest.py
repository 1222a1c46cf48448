"""Fixtures of the rollout observation tests: a real SQLite store with the ingest and
updates components migrated (the tables ``observe`` reads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.fleet_server.ingest import COMPONENT as INGEST
from edgefleet.fleet_server.storage import Store
from edgefleet.fleet_server.updates import COMPONENT as UPDATES


@pytest.fixture
def obs_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(tmp_path / "server.sqlite")
    store.migrate([INGEST, UPDATES])
    yield store
    store.close()
