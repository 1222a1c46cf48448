"""Key generation, storage (0600 files, offline directory) and loading."""

from __future__ import annotations

import logging
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.fleet_server.updates.errors import KeyMaterialError, MissingSigningKeyError
from edgefleet.fleet_server.updates.keys import (
    OFFLINE_SLOTS,
    KeyPolicy,
    RepoKind,
    RoleName,
    init_keys,
    load_signers,
)
from edgefleet.fleet_server.updates.repository import Repository


def test_init_writes_private_0600_files_and_splits_offline_keys(tmp_path: Path) -> None:
    online, offline = tmp_path / "online", tmp_path / "offline"
    signers = init_keys(online, offline, KeyPolicy(image_root_keys=3, image_root_threshold=2))
    for directory in (online, offline):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    offline_names = sorted(p.name.rsplit("-", 1)[0] for p in offline.iterdir())
    assert offline_names == ["director-root", "image-root", "image-root", "image-root",
                             "image-targets"]
    assert len(list(online.iterdir())) == 5
    assert len(signers.public_keys(RepoKind.IMAGE, RoleName.ROOT)) == 3
    loaded = load_signers([online, offline])
    for kind in RepoKind:
        for role in RoleName:
            assert ({k.keyid for k in loaded.public_keys(kind, role)}
                    == {k.keyid for k in signers.public_keys(kind, role)})
    online_only = load_signers([online, tmp_path / "usb-stick-not-mounted"])
    assert not any(online_only.public_keys(*slot) for slot in OFFLINE_SLOTS)


def test_private_keys_are_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    init_keys(tmp_path / "keys")
    for path in (tmp_path / "keys").iterdir():
        body = b"".join(path.read_bytes().splitlines()[1:-1]).decode()
        assert body[:40] not in caplog.text


def test_init_refuses_to_overwrite_keys(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys")
    with pytest.raises(KeyMaterialError, match="already holds keys"):
        init_keys(tmp_path / "keys")


def test_unsafe_permissions_are_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys")
    victim = next((tmp_path / "keys").iterdir())
    victim.chmod(0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        load_signers([tmp_path / "keys"])


def test_a_corrupt_key_file_is_a_clean_error(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys")
    victim = next((tmp_path / "keys").iterdir())
    victim.write_bytes(b"not a key")
    with pytest.raises(KeyMaterialError, match="not a usable private key"):
        load_signers([tmp_path / "keys"])


def test_threshold_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        KeyPolicy(image_root_keys=2, image_root_threshold=3)


def test_publishing_without_the_offline_targets_key_is_refused(tmp_path: Path) -> None:
    online, offline = tmp_path / "online", tmp_path / "offline"
    Repository(tmp_path / "repo", init_keys(online, offline)).initialise()
    repo = Repository(tmp_path / "repo", load_signers([online]))
    bundle = tmp_path / "b.tar"
    bundle.write_bytes(b"bundle")
    with pytest.raises(MissingSigningKeyError, match="image targets"):
        repo.add_bundle(bundle)
    assert list(repo.layout.image_targets.iterdir()) == []


def test_online_keys_alone_keep_snapshot_and_timestamp_fresh(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    online, offline = tmp_path / "online", tmp_path / "offline"
    Repository(tmp_path / "repo", init_keys(online, offline)).initialise()
    repo = Repository(tmp_path / "repo", load_signers([online]))
    later = repo.clock() + timedelta(days=400)  # even image targets are about to expire
    assert repo.refresh_expiring(later) == ["image/snapshot", "image/timestamp"]
    assert "image targets expires" in caplog.text
