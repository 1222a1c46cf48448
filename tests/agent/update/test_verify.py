"""verify_assignment against the real server over real HTTP: the happy path and each attack.

Every attack test expects a specific VerificationError subclass and checks that nothing
landed in the download directory (the device keeps running what it has).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile, Targets, Timestamp

from edgefleet.agent.update.verify import (
    BundleVerifier,
    EndlessDataError,
    FrozenMetadataError,
    MixAndMatchError,
    NoAssignmentError,
    RepoUrls,
    RollbackError,
    SlowRetrievalError,
    TamperedDataError,
    UntrustedMetadataError,
    VerificationError,
    WrongDeviceError,
    verify_assignment,
    verify_file,
)
from edgefleet.fleet_server.updates.keys import RepoKind, RoleName
from tests.fleet_server.updates.harness import (
    FaultyFetcher,
    RepoServer,
    repo_server,
    stalling_server,
)

DEVICE = "dev-1"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    with repo_server(tmp_path / "server") as srv:
        yield srv


@pytest.fixture
def device(tmp_path: Path) -> Path:
    return tmp_path / "device"


def check(server: RepoServer, device: Path, fetcher: FaultyFetcher | None = None,
          device_id: str = DEVICE) -> Path:
    result = verify_assignment(server.trust(device_id, device / "tuf"), server.urls(device_id),
                               device / "downloads", fetcher=fetcher)
    return result.path


def _files(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def refused(server: RepoServer, device: Path, error: type[VerificationError],
            fetcher: FaultyFetcher | None = None, match: str | None = None) -> None:
    """The check fails with ``error`` and the download directory is left exactly as it was."""
    before = _files(device / "downloads")
    with pytest.raises(error, match=match):
        check(server, device, fetcher)
    assert _files(device / "downloads") == before


def test_happy_path_downloads_the_assigned_bundle(server: RepoServer, device: Path) -> None:
    src = server.bundle("model-1.tar")
    server.bundle("model-2.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    path = check(server, device)
    assert path == device / "downloads" / "model-1.tar"
    assert path.read_bytes() == src.read_bytes()
    # a new assignment is a new director version; the same device state follows it
    server.repo.assign(DEVICE, "model-2.tar")
    verifier = BundleVerifier(server.trust(DEVICE, device / "tuf"), server.urls(DEVICE))
    assignment = verifier.check()
    assert assignment.name == "model-2.tar"
    assert assignment.hashes["sha256"] == hashlib.sha256(
        (server.data_dir.parent / "src-model-2.tar").read_bytes()).hexdigest()
    assert verifier.download(assignment, device / "downloads").path.is_file()
    assert not list((device / "downloads").glob(".partial-*"))


def test_no_assignment_is_reported(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign("someone-else", "model-1.tar")
    refused(server, device, NoAssignmentError, match=DEVICE)


def test_a_stalling_server_is_abandoned(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    with stalling_server() as url:
        urls = RepoUrls(server.urls(DEVICE).image_metadata_url,
                        server.urls(DEVICE).image_targets_url, f"{url}/director/")
        with pytest.raises(SlowRetrievalError, match="stalled"):
            verify_assignment(server.trust(DEVICE, device / "tuf"), urls, device / "downloads",
                              fetcher=FaultyFetcher(socket_timeout=1))
    assert not (device / "downloads").exists()


def test_metadata_signed_with_a_wrong_key_is_refused(server: RepoServer, device: Path,
                                                     tmp_path: Path) -> None:
    # An attacker runs their own repositories (own keys) with an arbitrary bundle and
    # gets the device to talk to them: the device's trusted roots do not know those keys.
    with repo_server(tmp_path / "evil") as evil:
        evil.bundle("model-evil.tar")
        evil.repo.assign(DEVICE, "model-evil.tar")
        trust = server.trust(DEVICE, device / "tuf")
        with pytest.raises(UntrustedMetadataError, match="signatures"):
            verify_assignment(trust, evil.urls(DEVICE), device / "downloads")
    assert not (device / "downloads").exists()


def test_unsigned_metadata_is_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")

    def strip_signatures(data: bytes) -> bytes:
        doc = json.loads(data)
        doc["signatures"] = []
        return json.dumps(doc).encode()

    fetcher = FaultyFetcher()
    fetcher.transform[f"/director/{DEVICE}/metadata/timestamp.json"] = strip_signatures
    refused(server, device, UntrustedMetadataError, fetcher)


def test_tampered_bundle_bytes_are_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar", size=2048)
    server.repo.assign(DEVICE, "model-1.tar")
    stored = next(server.repo.layout.image_targets.glob("*.model-1.tar"))
    stored.write_bytes(b"\x00" * 2048)  # same length, other bytes
    refused(server, device, TamperedDataError, match="model-1.tar")
    assert not (device / "downloads" / "model-1.tar").exists()


def test_metadata_rollback_is_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.bundle("model-2.tar")
    server.repo.assign(DEVICE, "model-2.tar")
    timestamp = server.repo.layout.director_metadata(DEVICE) / "timestamp.json"
    old = timestamp.read_bytes()  # version 1: assigns model-2
    server.repo.assign(DEVICE, "model-1.tar")  # version 2
    assert check(server, device).name == "model-1.tar"  # the device now trusts version 2
    timestamp.write_bytes(old)  # replay the older, validly signed metadata
    refused(server, device, RollbackError)


def test_expired_image_timestamp_is_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    server.clock.now -= timedelta(days=2)  # signed two days ago: expired yesterday
    server.repo.image.resign(RoleName.TIMESTAMP)
    refused(server, device, FrozenMetadataError, match="image repository")


def test_expired_director_metadata_is_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.clock.now -= timedelta(days=2)
    server.repo.assign(DEVICE, "model-1.tar")
    refused(server, device, FrozenMetadataError, match="director repository")


def test_refresh_expiring_unfreezes(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    real_now = server.clock.now
    server.clock.now -= timedelta(days=2)
    server.repo.image.resign(RoleName.TIMESTAMP)
    server.clock.now = real_now
    done = server.repo.refresh_expiring()
    assert "image/timestamp" in done
    assert check(server, device).name == "model-1.tar"


def _director_publishes(server: RepoServer, target: TargetFile) -> None:
    """What a holder of the (online) director keys alone can do."""
    director = server.repo._director_repo(DEVICE)
    director.publish_targets(Targets(targets={target.path: target}))


def _bound(length: int, hashes: dict[str, str], name: str, device_id: str = DEVICE) -> TargetFile:
    return TargetFile(length, hashes, name, {"custom": {"edgefleet": {"device_id": device_id}}})


def test_mix_and_match_other_digest_is_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar", size=1000)
    _director_publishes(server, _bound(1000, {"sha256": "ab" * 32}, "model-1.tar"))
    refused(server, device, MixAndMatchError, match="disagree")


def test_compromised_director_key_cannot_install_unlisted_bundle(
        server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    evil = b"evil model bytes"
    digest = hashlib.sha256(evil).hexdigest()
    # the attacker even manages to drop the bytes where the image repository serves files
    (server.repo.layout.image_targets / f"{digest}.model-evil.tar").write_bytes(evil)
    _director_publishes(server, _bound(len(evil), {"sha256": digest}, "model-evil.tar"))
    refused(server, device, MixAndMatchError, match="does not list")
    assert not (device / "downloads").exists()


def test_assignment_for_another_device_is_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign("dev-2", "model-1.tar")
    # a man in the middle serves dev-2's validly signed director metadata to dev-1
    trust = server.trust(DEVICE, device / "tuf")
    with pytest.raises(WrongDeviceError, match="dev-2"):
        verify_assignment(trust, server.urls("dev-2"), device / "downloads")
    assert not (device / "downloads").exists()


def test_endless_data_is_cut_at_the_signed_length(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar", size=3000)
    server.repo.assign(DEVICE, "model-1.tar")
    fetcher = FaultyFetcher()
    fetcher.append[".model-1.tar"] = b"\x00" * 10_000
    refused(server, device, EndlessDataError, fetcher, match="too much data")
    assert any(url.endswith(".model-1.tar") for url in fetcher.seen)


def test_endless_metadata_is_refused(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    fetcher = FaultyFetcher()
    fetcher.append["/image/metadata/timestamp.json"] = b" " * 20_000  # > timestamp max
    refused(server, device, EndlessDataError, fetcher)


def test_old_key_is_refused_after_rotation(server: RepoServer, device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    assert check(server, device).name == "model-1.tar"
    root = server.repo._director_repo(None).root().signed
    old_keyid = root.roles["timestamp"].keyids[0]
    old_signer: CryptoSigner = server.signers.for_keyids(
        RepoKind.DIRECTOR, RoleName.TIMESTAMP, [old_keyid])[0]
    server.repo.rotate_key(RepoKind.DIRECTOR, RoleName.TIMESTAMP, [server.online_keys])
    assert not list(server.online_keys.glob(f"director-timestamp-{old_keyid[:16]}.pem"))
    assert check(server, device).name == "model-1.tar"  # the device follows the rotation
    assert (device / "tuf" / "director" / "root_history" / "2.root.json").is_file()

    # someone who kept the old key signs a newer timestamp with it
    current = server.repo._director_repo(DEVICE).timestamp()
    forged = Metadata(Timestamp(version=current.signed.version + 1,
                                expires=current.signed.expires,
                                snapshot_meta=current.signed.snapshot_meta))
    forged.sign(old_signer)
    fetcher = FaultyFetcher()
    fetcher.replace[f"/director/{DEVICE}/metadata/timestamp.json"] = forged.to_bytes()
    refused(server, device, UntrustedMetadataError, fetcher)


def test_image_root_rotation_with_threshold_is_followed(server: RepoServer,
                                                        device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    trust = server.trust(DEVICE, device / "tuf")  # provisioned with image root version 1
    server.repo.rotate_key(RepoKind.IMAGE, RoleName.ROOT, [server.offline_keys])
    server.repo.rotate_key(RepoKind.IMAGE, RoleName.TARGETS, [server.offline_keys])
    result = verify_assignment(trust, server.urls(DEVICE), device / "downloads")
    assert result.path.name == "model-1.tar"
    assert (device / "tuf" / "image" / "root_history" / "3.root.json").is_file()


def test_one_stolen_image_root_key_cannot_sign_a_new_root(server: RepoServer,
                                                          device: Path) -> None:
    server.bundle("model-1.tar")
    server.repo.assign(DEVICE, "model-1.tar")
    current = server.repo.image.root()
    stolen = server.signers.for_keyids(RepoKind.IMAGE, RoleName.ROOT,
                                       current.signed.roles["root"].keyids)[0]
    attacker = CryptoSigner.generate_ed25519()
    forged_root = Metadata.from_bytes(current.to_bytes()).signed
    for keyid in list(forged_root.roles["timestamp"].keyids):
        forged_root.revoke_key(keyid, "timestamp")
    forged_root.add_key(attacker.public_key, "timestamp")
    forged_root.version += 1
    forged = Metadata(forged_root)
    forged.sign(stolen)  # one of the 2-of-3 root keys
    fetcher = FaultyFetcher()
    fetcher.replace["/image/metadata/2.root.json"] = forged.to_bytes()
    refused(server, device, UntrustedMetadataError, fetcher, match="image repository")


def test_a_resumed_range_download_is_verified_with_verify_file(server: RepoServer,
                                                               device: Path) -> None:
    server.bundle("model-1.tar", size=50_000)
    server.repo.assign(DEVICE, "model-1.tar")
    assignment = BundleVerifier(server.trust(DEVICE, device / "tuf"), server.urls(DEVICE)).check()
    url = f"{server.urls(DEVICE).image_targets_url}{assignment.hashes['sha256']}.model-1.tar"
    first = requests.get(url, headers={"Range": "bytes=0-29999"}, timeout=10)  # "interrupted"
    rest = requests.get(url, headers={"Range": "bytes=30000-"}, timeout=10)
    assert (first.status_code, rest.status_code) == (206, 206)
    path = device / "resumed.tar"
    path.write_bytes(first.content + rest.content)
    verify_file(assignment, path)
    path.write_bytes(first.content + first.content[:20_000])
    with pytest.raises(TamperedDataError):
        verify_file(assignment, path)
