"""publish_release / `edgefleet release publish` after `edgefleet keys init`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from edgefleet.agent.update.bundle import read_manifest
from edgefleet.fleet_server.app import all_components
from edgefleet.fleet_server.audit import Actor, ActorKind
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.registry.artifacts import ArtifactStore
from edgefleet.fleet_server.registry.errors import NotFoundError
from edgefleet.fleet_server.registry.service import RegistryService
from edgefleet.fleet_server.storage import Store
from edgefleet.fleet_server.updates.errors import MissingSigningKeyError
from edgefleet.fleet_server.updates.publish import PublishError, publish_release
from edgefleet.tools.cli import cli
from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.release import build_release

ACTOR = Actor(ActorKind.SYSTEM, "test", "test-publisher", "admin")


@dataclass(frozen=True)
class Server:
    data: Path
    offline: Path

    @property
    def key_dirs(self) -> list[Path]:
        return [self.data / "keys", self.offline]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    return onnx_models.mlp(folder / "mlp.onnx", sizes=(6, 8, 3), seed=2).path


@pytest.fixture
def server(tmp_path: Path) -> Server:
    data, offline = tmp_path / "data", tmp_path / "offline"
    init_data_dir(data, all_components())
    result = CliRunner().invoke(cli, ["keys", "init", "--data-dir", str(data),
                                      "--offline-dir", str(offline)])
    assert result.exit_code == 0, result.output
    return Server(data, offline)


def _bundle(model: Path, folder: Path, version: str, parent: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    return build_release(model, folder, name="mlp", version=version, parent=parent).path


def _signed_targets(data: Path) -> Targets:
    """The image repository's current targets, with every signature checked."""
    meta = data / "repo" / "image" / "metadata"
    root = Metadata[Root].from_file(str(meta / "root.json"))
    ts = Metadata[Timestamp].from_file(str(meta / "timestamp.json"))
    root.signed.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    snap = Metadata[Snapshot].from_file(
        str(meta / f"{ts.signed.snapshot_meta.version}.snapshot.json"))
    root.signed.verify_delegate("snapshot", snap.signed_bytes, snap.signatures)
    targets = Metadata[Targets].from_file(
        str(meta / f"{snap.signed.meta['targets.json'].version}.targets.json"))
    root.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    return targets.signed


def _registry(data: Path) -> tuple[RegistryService, Store]:
    from edgefleet.fleet_server.audit import AuditLog

    store = Store.open(load_config(data, env={}).db_path)
    return RegistryService(store, AuditLog(store), ArtifactStore(data / "artifacts")), store


def _audit_actions(store: Store) -> list[str]:
    return [r["action"] for r in store.db.query("SELECT action FROM audit_log ORDER BY id")]


def test_publish_lists_the_signed_target_and_registers_the_version(
        server: Server, model: Path, tmp_path: Path) -> None:
    v1 = _bundle(model, tmp_path / "b", "1.0")
    v2 = _bundle(model, tmp_path / "b", "1.1", parent="1.0")
    first = publish_release(v1, server.data, server.key_dirs, ACTOR)
    result = publish_release(v2, server.data, server.key_dirs, ACTOR)
    sha = hashlib.sha256(v2.read_bytes()).hexdigest()
    assert (result.target_name, result.sha256, result.length) == (
        "mlp-1.1.tar", sha, v2.stat().st_size)
    assert not result.already_published and result.stage == "draft"
    listed = _signed_targets(server.data).targets
    assert sorted(listed) == ["mlp-1.0.tar", "mlp-1.1.tar"]
    assert listed["mlp-1.1.tar"].hashes == {"sha256": sha}
    assert listed["mlp-1.1.tar"].length == v2.stat().st_size
    stored = server.data / "repo" / "image" / "targets" / f"{sha}.mlp-1.1.tar"
    assert stored.read_bytes() == v2.read_bytes()

    manifest = read_manifest(v2)
    registry, store = _registry(server.data)
    try:
        record = registry.get_version("mlp", "1.1")
        assert record["digest"] == f"sha256:{manifest.model_sha256}"
        assert record["framework"] == "onnx"
        assert record["parent_id"] == first.registry_version["id"]
        assert record["lineage"] == {
            "parent_version": "1.0", "code_version": manifest.lineage["code_version"],
            "bundle": "mlp-1.1.tar", "bundle_sha256": sha,
        }
        assert record["metrics"] == dict(manifest.metrics)
        assert registry.artifact_path("mlp", "1.1").read_bytes() == model.read_bytes()
        actions = _audit_actions(store)
        assert actions.count("release.publish") == 2
        assert actions.count("model.version.upload") == 2
    finally:
        store.close()


def test_lineage_and_profile_from_reference_data_reach_the_registry(
        server: Server, model: Path, tmp_path: Path) -> None:
    import numpy as np

    ref = tmp_path / "ref.npy"
    np.save(ref, np.random.default_rng(0).uniform(-1, 1, (30, 6)).astype(np.float32))
    bundle = build_release(model, tmp_path, name="mlp", version="2", reference=ref,
                           parent="1", training_run="run-3").path
    publish_release(bundle, server.data, server.key_dirs, ACTOR)
    registry, store = _registry(server.data)
    try:
        record = registry.get_version("mlp", "2")
    finally:
        store.close()
    manifest = read_manifest(bundle)
    assert record["parent_id"] is None  # version 1 was never registered: lineage only
    assert record["lineage"]["parent_version"] == "1"
    assert record["lineage"]["training_run"] == "run-3"
    assert record["lineage"]["data_digest"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert record["reference_profile"] == json.loads(json.dumps(manifest.reference_profile))
    assert "probabilities.mean" in record["metrics"]


def test_publishing_the_same_bundle_again_is_a_no_op(server: Server, model: Path,
                                                     tmp_path: Path) -> None:
    bundle = _bundle(model, tmp_path / "b", "1")
    publish_release(bundle, server.data, server.key_dirs, ACTOR)
    version_before = _signed_targets(server.data).version
    again = publish_release(bundle, server.data, server.key_dirs, ACTOR)
    assert again.already_published
    assert _signed_targets(server.data).version == version_before
    _, store = _registry(server.data)
    try:
        assert _audit_actions(store).count("release.publish") == 1
    finally:
        store.close()


def test_another_bundle_with_a_published_name_and_version_is_refused(
        server: Server, model: Path, tmp_path: Path) -> None:
    publish_release(_bundle(model, tmp_path / "a", "1"), server.data, server.key_dirs, ACTOR)
    other_model = onnx_models.mlp(tmp_path / "other.onnx", sizes=(6, 8, 3), seed=9).path
    other = _bundle(other_model, tmp_path / "b", "1")
    with pytest.raises(PublishError, match="already has a version 1 from other content"):
        publish_release(other, server.data, server.key_dirs, ACTOR)
    listed = _signed_targets(server.data).targets["mlp-1.tar"]
    assert listed.hashes["sha256"] == hashlib.sha256(
        (tmp_path / "a" / "mlp-1.tar").read_bytes()).hexdigest()


def test_without_the_offline_targets_key_nothing_is_published(
        server: Server, model: Path, tmp_path: Path) -> None:
    bundle = _bundle(model, tmp_path / "b", "1")
    with pytest.raises(MissingSigningKeyError, match="pass the offline key folder"):
        publish_release(bundle, server.data, [server.data / "keys"], ACTOR)
    assert _signed_targets(server.data).targets == {}
    assert list((server.data / "repo" / "image" / "targets").iterdir()) == []
    registry, store = _registry(server.data)
    try:
        with pytest.raises(NotFoundError):
            registry.get_version("mlp", "1")
    finally:
        store.close()
    # with the offline folder back, the same call succeeds
    assert not publish_release(bundle, server.data, server.key_dirs, ACTOR).already_published


def test_invalid_bundle_and_uninitialised_server_are_refused(server: Server,
                                                             tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file" * 100)
    with pytest.raises(PublishError, match="is not a valid bundle"):
        publish_release(junk, server.data, server.key_dirs, ACTOR)
    with pytest.raises(PublishError, match="run `edgefleet keys init`"):
        publish_release(junk, tmp_path / "empty", [tmp_path / "empty" / "keys"], ACTOR)
    keys_only = tmp_path / "keys-only"
    CliRunner().invoke(cli, ["keys", "init", "--data-dir", str(keys_only)])
    with pytest.raises(PublishError, match="not initialised"):
        publish_release(junk, keys_only, [keys_only / "keys"], ACTOR)


def test_cli_publish(server: Server, model: Path, tmp_path: Path) -> None:
    bundle = _bundle(model, tmp_path / "b", "7")
    base = ["release", "publish", str(bundle), "--data-dir", str(server.data)]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 1
    assert "image targets key is not available" in result.output
    assert "--offline-dir" in result.output
    result = CliRunner().invoke(cli, [*base, "--offline-dir", str(server.offline)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("published: target mlp-7.tar")
    assert "registry: mlp version 7 (stage draft)" in result.output
    result = CliRunner().invoke(cli, [*base, "--offline-dir", str(server.offline)])
    assert result.exit_code == 0 and result.output.startswith("already published")
