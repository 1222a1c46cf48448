"""Repository.assign with a shadow candidate (signed into the director's custom field)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.fleet_server.updates.errors import InvalidRequest, UnknownTargetError
from edgefleet.fleet_server.updates.keys import init_keys
from edgefleet.fleet_server.updates.repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository(tmp_path / "repo", init_keys(tmp_path / "keys"))
    r.initialise()
    for name, data in (("m-1.tar", b"one"), ("m-2.tar", b"two")):
        (tmp_path / name).write_bytes(data)
        r.add_bundle(tmp_path / name)
    return r


def test_shadow_is_signed_into_the_assignment(repo: Repository) -> None:
    assigned = repo.assign("dev-1", "m-1.tar", shadow_target="m-2.tar", shadow_rate=0.25)
    assert assigned.custom == {"edgefleet": {
        "device_id": "dev-1", "shadow": {"target": "m-2.tar", "sample_rate": "0.25"}}}
    assert repo.assignment("dev-1") == assigned
    # the director lists only the active bundle; the shadow is named, not listed
    assert list(repo._director_repo("dev-1").targets().signed.targets) == ["m-1.tar"]
    default = repo.assign("dev-1", "m-1.tar", shadow_target="m-2.tar")
    assert default.custom["edgefleet"]["shadow"]["sample_rate"] == "0.1"
    plain = repo.assign("dev-1", "m-1.tar")
    assert plain.custom == {"edgefleet": {"device_id": "dev-1"}}


@pytest.mark.parametrize("rate", [0, 0.0, -0.1, 1.5, float("nan"), True])
def test_shadow_rate_must_be_in_zero_one(repo: Repository, rate: float) -> None:
    with pytest.raises(InvalidRequest, match="shadow_rate"):
        repo.assign("dev-1", "m-1.tar", shadow_target="m-2.tar", shadow_rate=rate)
    assert repo.assignment("dev-1") is None


def test_unknown_or_invalid_shadow_target_is_refused(repo: Repository) -> None:
    with pytest.raises(UnknownTargetError, match="shadow target"):
        repo.assign("dev-1", "m-1.tar", shadow_target="nope.tar")
    with pytest.raises(InvalidRequest, match="invalid target name"):
        repo.assign("dev-1", "m-1.tar", shadow_target="../x")
    assert repo.assignment("dev-1") is None
    repo.assign("dev-1", "m-1.tar", shadow_target="m-1.tar", shadow_rate=1)  # rate 1 is fine
