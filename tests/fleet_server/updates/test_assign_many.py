"""Batch director signing (``Repository.assign_many``): every device of a batch gets its
own assignment that the agent's real TUF verification accepts, bad input signs nothing,
and a batch that never committed (a crash) leaves every device's repository as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Targets

from edgefleet.agent.update.verify import BundleVerifier, verify_assignment
from edgefleet.fleet_server.updates.errors import InvalidRequest, UnknownTargetError
from edgefleet.fleet_server.updates.keys import RepoKind
from edgefleet.fleet_server.updates.repository import Assignment
from edgefleet.fleet_server.updates.signed_repo import BatchPublisher, current_versions
from tests.fleet_server.updates.harness import RepoServer, repo_server

DEVICES = [f"dev-{i}" for i in range(6)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    with repo_server(tmp_path / "server") as srv:
        srv.bundle("model-1.tar")
        srv.bundle("model-2.tar")
        yield srv


def _verify(server: RepoServer, device_id: str, state: Path) -> str:
    """What the agent's verification (tuf.ngclient against the served repositories)
    accepts as ``device_id``'s assignment; the bundle is downloaded and checked."""
    result = verify_assignment(server.trust(device_id, state / device_id / "tuf"),
                               server.urls(device_id), state / device_id / "downloads")
    assert result.path.read_bytes() == (server.data_dir.parent /
                                        f"src-{result.path.name}").read_bytes()
    return result.path.name


def test_a_batch_gives_every_device_its_own_verifiable_assignment(server: RepoServer,
                                                                    tmp_path: Path) -> None:
    state = tmp_path / "devices"
    server.repo.assign(DEVICES[0], "model-2.tar")  # one device has history already
    signed = server.repo.assign_many(
        [Assignment(d, "model-1.tar") for d in DEVICES[:3]]
        + [Assignment(DEVICES[3], "model-2.tar", shadow_target="model-1.tar",
                      shadow_rate=0.25)])
    assert set(signed) == set(DEVICES[:4])
    assert {d: _verify(server, d, state) for d in DEVICES[:4]} == {
        DEVICES[0]: "model-1.tar", DEVICES[1]: "model-1.tar", DEVICES[2]: "model-1.tar",
        DEVICES[3]: "model-2.tar"}
    # each device has its own version counters, bound to it
    director = server.repo.layout.director_metadata
    assert current_versions(director(DEVICES[0])) == (2, 2, 2)
    assert current_versions(director(DEVICES[1])) == (1, 1, 1)
    custom = signed[DEVICES[3]].unrecognized_fields["custom"]["edgefleet"]
    assert custom == {"device_id": DEVICES[3],
                      "shadow": {"target": "model-1.tar", "sample_rate": "0.25"}}
    assert server.repo.assignment(DEVICES[3]) == signed[DEVICES[3]]
    # the next batch is a new version every device's stored trust state follows
    server.repo.assign_many([Assignment(d, "model-2.tar") for d in DEVICES[:4]])
    for device_id in DEVICES[:4]:
        verifier = BundleVerifier(server.trust(device_id, state / device_id / "tuf"),
                                  server.urls(device_id))
        assert verifier.check().name == "model-2.tar"
    assert server.repo.assigned_targets(DEVICES) == {
        **dict.fromkeys(DEVICES[:4], "model-2.tar"), DEVICES[4]: None, DEVICES[5]: None}


@pytest.mark.parametrize(("batch", "error"), [
    ([Assignment(DEVICES[0], "model-2.tar"), Assignment(DEVICES[1], "model-9.tar")],
     UnknownTargetError),
    ([Assignment(DEVICES[0], "model-2.tar"),
      Assignment(DEVICES[1], "model-2.tar", shadow_target="model-9.tar")], UnknownTargetError),
    ([Assignment(DEVICES[0], "model-2.tar"), Assignment(DEVICES[0], "model-1.tar")],
     InvalidRequest),
    ([Assignment(DEVICES[0], "model-2.tar"), Assignment("../etc", "model-2.tar")],
     InvalidRequest),
    ([Assignment(DEVICES[0], "model-2.tar", shadow_target="model-1.tar", shadow_rate=1.5)],
     InvalidRequest),
])
def test_bad_input_signs_nothing(server: RepoServer, batch: list[Assignment],
                                 error: type[Exception]) -> None:
    server.repo.assign(DEVICES[0], "model-1.tar")
    before = sorted(p.name for p in server.repo.layout.director_devices.rglob("*"))
    with pytest.raises(error):
        server.repo.assign_many(batch)
    assert sorted(p.name for p in server.repo.layout.director_devices.rglob("*")) == before
    assert server.repo.assigned_targets(DEVICES[:1]) == {DEVICES[0]: "model-1.tar"}


def test_a_batch_that_never_committed_leaves_every_device_as_it_was(server: RepoServer,
                                                                     tmp_path: Path) -> None:
    """A server killed after staging (versioned files written, timestamps not renamed):
    devices still verify their old assignment; the next batch publishes over the leftovers."""
    state = tmp_path / "devices"
    server.repo.assign_many([Assignment(d, "model-1.tar") for d in DEVICES[:3]])
    assert {_verify(server, d, state) for d in DEVICES[:3]} == {"model-1.tar"}
    root = Metadata[Root].from_file(str(server.repo.layout.director_root / "root.json"))
    publisher = BatchPublisher(RepoKind.DIRECTOR, root.signed, server.signers,
                               server.repo.expiry, server.repo.clock())
    for device_id in DEVICES[:2]:
        assigned = server.repo.assignment(device_id)
        assert assigned is not None
        publisher.stage(server.repo.layout.director_metadata(device_id),
                        Targets(targets={assigned.path: assigned}))
    # killed here: no commit (the temp timestamps stay behind, as after a real kill)
    for device_id in DEVICES[:3]:
        metadata = server.repo.layout.director_metadata(device_id)
        assert json.loads((metadata / "timestamp.json").read_bytes())["signed"]["version"] == 1
        assert _verify(server, device_id, state) == "model-1.tar"
    server.repo.assign_many([Assignment(d, "model-2.tar") for d in DEVICES[:3]])
    assert {_verify(server, d, state) for d in DEVICES[:3]} == {"model-2.tar"}
    publisher.discard()
    assert not list(server.repo.layout.director_devices.rglob(".timestamp.json.*"))
