"""The update machine with the real TUF verifier against the real server over HTTP.

Bundles are real (model + manifest), published in the server's image repository and
assigned through its director; the device installs a good one, rolls back one that fails
warm-up, and refuses tampered bytes, keeping the current model serving throughout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.update.machine import TufVerifier, UpdateMachine
from edgefleet.agent.update.state import UpdateState
from edgefleet.agent.update.verify import BundleVerifier
from tests.agent.update.support import ListReporter, assignment_for, build_bundle, manifest_of
from tests.fleet_server.updates.harness import FaultyFetcher, RepoServer, repo_server

DEVICE = "dev-1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    with repo_server(tmp_path / "server") as srv:
        yield srv


def tampering_fetcher() -> FaultyFetcher:
    """A malicious mirror: flips the first byte of every bundle it serves."""
    fetcher = FaultyFetcher()
    fetcher.transform[".tar"] = lambda data: bytes([data[0] ^ 0xFF]) + data[1:]
    return fetcher


def test_install_roll_back_and_refuse_over_http(server: RepoServer, tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    good1, good2 = build_bundle(root, "1", seed=1), build_bundle(root, "2", seed=2)
    bad = build_bundle(root, "bad", seed=3, kind="nan")
    for bundle in (good1, good2, bad):
        server.repo.add_bundle(bundle, bundle.name)
    tampering = {"on": False}

    def make() -> BundleVerifier:
        fetcher = tampering_fetcher() if tampering["on"] else None
        return BundleVerifier(server.trust(DEVICE, tmp_path / "device" / "tuf"),
                              server.urls(DEVICE), fetcher=fetcher)

    reporter = ListReporter()
    machine = UpdateMachine(tmp_path / "device", TufVerifier(make), reporter)
    try:
        assert machine.run_once().state is UpdateState.IDLE  # nothing assigned yet
        server.repo.assign(DEVICE, good1.name)
        assert machine.run_once().state is UpdateState.COMMITTED
        assert machine.holder.label == assignment_for(good1).key
        sample = manifest_of(good1).sample_arrays()

        server.repo.assign(DEVICE, bad.name)
        assert machine.run_once().state is UpdateState.IDLE
        assert machine.record.failed_in is UpdateState.WARMING
        assert machine.holder.label == assignment_for(good1).key
        machine.holder.predict(sample)

        tampering["on"] = True
        server.repo.assign(DEVICE, good2.name)
        assert machine.run_once().state is UpdateState.IDLE
        assert machine.record.failed_in is UpdateState.DOWNLOADING
        assert "TamperedDataError" in (machine.record.error or "")
        assert machine.holder.label == assignment_for(good1).key
        machine.holder.predict(sample)

        tampering["on"] = False  # a download failure is retried, not blacklisted
        assert machine.run_once().state is UpdateState.COMMITTED
        assert machine.holder.label == assignment_for(good2).key
        machine.holder.predict(sample)
        failures = [e for e in reporter.events if e.get("event") == "failed"]
        assert [e["bundle"] for e in failures] == [bad.name, good2.name]
    finally:
        machine.holder.close()
