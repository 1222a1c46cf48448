"""Repository: bundles, assignments, expiry refresh and key rotation (on disk, no HTTP)."""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from edgefleet.fleet_server.updates.errors import (
    InvalidRequest,
    MissingSigningKeyError,
    RepositoryStateError,
    UnknownTargetError,
)
from edgefleet.fleet_server.updates.keys import RepoKind, RoleName, init_keys, load_signers
from edgefleet.fleet_server.updates.repository import Repository, store_root_copy
from edgefleet.fleet_server.updates.signed_repo import ExpiryPolicy


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    r = Repository(tmp_path / "repo", init_keys(tmp_path / "keys"))
    r.initialise()
    return r


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_initialise_twice_is_refused(repo: Repository) -> None:
    with pytest.raises(RepositoryStateError, match="already initialised"):
        repo.initialise()


def test_uninitialised_repository_is_a_clean_error(tmp_path: Path) -> None:
    repo = Repository(tmp_path / "nothing", init_keys(tmp_path / "k"))
    with pytest.raises(RepositoryStateError, match="keys init"):
        repo.targets()


def test_image_root_uses_the_configured_threshold(repo: Repository) -> None:
    root = repo.image.root().signed
    assert root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    assert root.consistent_snapshot


def test_add_bundle_lists_name_length_sha256(repo: Repository, tmp_path: Path) -> None:
    target = repo.add_bundle(_file(tmp_path, "m.tar", b"abc" * 100), "model-1.0.tar")
    assert (target.path, target.length) == ("model-1.0.tar", 300)
    assert target.hashes["sha256"] == hashlib.sha256(b"abc" * 100).hexdigest()
    assert repo.targets()["model-1.0.tar"] == target
    stored = repo.layout.image_targets / f"{target.hashes['sha256']}.model-1.0.tar"
    assert stored.read_bytes() == b"abc" * 100
    version = repo.image.targets().signed.version
    assert repo.add_bundle(_file(tmp_path, "m.tar", b"abc" * 100), "model-1.0.tar") == target
    assert repo.image.targets().signed.version == version  # idempotent
    with pytest.raises(InvalidRequest, match="already exists"):
        repo.add_bundle(_file(tmp_path, "n.tar", b"other"), "model-1.0.tar")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "x" * 300, "a..b", "-x"])
def test_bad_names_are_refused(repo: Repository, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidRequest):
        repo.add_bundle(_file(tmp_path, "m.tar", b"x"), name)
    assert list(repo.layout.image_targets.iterdir()) == []
    repo.add_bundle(_file(tmp_path, "m.tar", b"x"))
    with pytest.raises(InvalidRequest):
        repo.assign(name, "m.tar")
    with pytest.raises(InvalidRequest):
        repo.assign("dev-1", name)
    with pytest.raises(InvalidRequest):
        repo.assign("", "m.tar")


def test_assign_copies_image_info_and_binds_the_device(repo: Repository,
                                                       tmp_path: Path) -> None:
    listed = repo.add_bundle(_file(tmp_path, "m.tar", b"model"))
    assert repo.assignment("dev-1") is None
    assigned = repo.assign("dev-1", "m.tar")
    assert (assigned.length, assigned.hashes) == (listed.length, listed.hashes)
    assert assigned.custom == {"edgefleet": {"device_id": "dev-1"}}
    assert repo.assignment("dev-1") == assigned
    repo.assign("dev-1", "m.tar")
    director = repo._director_repo("dev-1")
    assert director.targets().signed.version == 2  # its own version counter
    assert director.timestamp().signed.version == 2
    assert repo.image.timestamp().signed.version == 2  # untouched by assignments
    with pytest.raises(UnknownTargetError, match="does not list"):
        repo.assign("dev-1", "unknown.tar")


def test_director_metadata_is_short_lived(repo: Repository, tmp_path: Path) -> None:
    repo.add_bundle(_file(tmp_path, "m.tar", b"model"))
    repo.assign("dev-1", "m.tar")
    limit = repo.clock() + timedelta(days=1)
    director = repo._director_repo("dev-1")
    assert director.targets().signed.expires <= limit
    assert director.timestamp().signed.expires <= limit
    assert repo.image.targets().signed.expires > limit


def test_refresh_expiring_resigns_before_expiry(tmp_path: Path) -> None:
    policy = ExpiryPolicy(refresh_before_s=3600)
    repo = Repository(tmp_path / "repo", init_keys(tmp_path / "keys"), policy)
    repo.initialise()
    repo.add_bundle(_file(tmp_path, "m.tar", b"model"))
    repo.assign("dev-1", "m.tar")
    now = repo.clock()
    assert repo.refresh_expiring(now) == []
    soon = now + timedelta(hours=23, minutes=30)
    done = repo.refresh_expiring(soon)
    assert done == ["image/timestamp", "director/dev-1/targets", "director/dev-1/snapshot",
                    "director/dev-1/timestamp"]
    assert repo.refresh_expiring(now) == []
    later = now + timedelta(days=7)
    assert "image/snapshot" in repo.refresh_expiring(later)


def test_rotation_makes_a_new_root_signed_by_old_and_new_keys(repo: Repository,
                                                               tmp_path: Path) -> None:
    old_root = repo.image.root()
    old_keyid = old_root.signed.roles["snapshot"].keyids[0]
    new_ids = repo.rotate_key(RepoKind.IMAGE, RoleName.SNAPSHOT, [tmp_path / "keys"])
    new_root = repo.image.root()
    assert new_root.signed.version == 2
    assert new_root.signed.roles["snapshot"].keyids == new_ids
    assert old_keyid not in new_root.signed.keys
    old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("snapshot", repo.image.snapshot().signed_bytes,
                                    repo.image.snapshot().signatures)
    versioned = Metadata[Root].from_file(str(repo.layout.image_metadata / "2.root.json"))
    assert versioned.signed.version == 2
    assert not list((tmp_path / "keys").glob(f"image-snapshot-{old_keyid[:16]}.pem"))
    assert list((tmp_path / "keys").glob(f"image-snapshot-{new_ids[0][:16]}.pem"))


def test_rotation_without_the_offline_root_keys_changes_nothing(tmp_path: Path) -> None:
    online, offline = tmp_path / "online", tmp_path / "offline"
    Repository(tmp_path / "repo", init_keys(online, offline)).initialise()
    repo = Repository(tmp_path / "repo", load_signers([online]))
    keys_before = sorted(p.name for p in online.iterdir())
    with pytest.raises(MissingSigningKeyError, match="root key"):
        repo.rotate_key(RepoKind.DIRECTOR, RoleName.TIMESTAMP, [online])
    assert sorted(p.name for p in online.iterdir()) == keys_before
    assert repo._director_repo(None).root().signed.version == 1


def test_store_root_copy_provisions_a_device(repo: Repository, tmp_path: Path) -> None:
    path = store_root_copy(repo, RepoKind.DIRECTOR, tmp_path / "device" / "director-root.json")
    assert path.read_bytes() == (repo.layout.director_root / "root.json").read_bytes()


def test_concurrent_writers_on_one_directory_lose_nothing(repo: Repository,
                                                          tmp_path: Path) -> None:
    """Two Repository objects (like the CLI and the server) publishing at the same time."""
    other = Repository(repo.layout.root, repo.signers)
    errors: list[BaseException] = []

    def publish(r: Repository, prefix: str) -> None:
        try:
            for i in range(8):
                r.add_bundle(_file(tmp_path, f"{prefix}{i}", f"{prefix}{i}".encode()))
                r.assign(f"dev-{prefix}", f"{prefix}{i}")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(r, p)) for r, p in ((repo, "a"),
                                                                          (other, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(repo.targets()) == sorted([f"a{i}" for i in range(8)]
                                            + [f"b{i}" for i in range(8)])
    assert repo.image.targets().signed.version == 17
    assigned = repo.assignment("dev-b")
    assert assigned is not None and assigned.path == "b7"
