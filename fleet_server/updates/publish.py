"""Publish a release bundle: list it in the image repository and register its model.

``publish_release`` is what ``edgefleet release publish`` runs on the server machine:

1. validate the bundle with the agent's own reader (layout, manifest, model digest);
2. refuse early when the registry already holds ``name``/``version`` from other bytes
   (versions are immutable) or the image repository lists the target with other bytes;
3. add it to the image repository as target ``{name}-{version}.tar``, signed with the
   image targets key (offline when ``keys init`` was given ``--offline-dir``: pass that
   folder in ``key_dirs``; without it nothing is changed);
4. register the model file from inside the bundle as version ``version`` of model
   ``name`` (metrics, reference profile, parent when it is registered, lineage plus
   ``bundle`` = target name and ``bundle_sha256``), audited as ``model.version.upload``,
   and audit the release itself as ``release.publish``.

Idempotent: publishing the same bundle again is a no-op reported as
``already_published``; a run interrupted between steps 3 and 4 is completed by running it
again. The image repository goes first so a missing offline key leaves nothing behind.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.fleet_server.audit import Actor, AuditLog
from edgefleet.fleet_server.updates.errors import (
    InvalidRequest,
    MissingSigningKeyError,
    UpdatesError,
)
from edgefleet.fleet_server.updates.keys import load_signers
from edgefleet.fleet_server.updates.layout import check_target_name
from edgefleet.fleet_server.updates.repository import Repository

log = logging.getLogger(__name__)


class PublishError(UpdatesError):
    """The bundle cannot be published: invalid, conflicting, or the server is not set up."""


@dataclass(frozen=True)
class PublishResult:
    """What was published (or found already published).

    Attributes:
        target_name: the image repository's target, ``{name}-{version}.tar``.
        length, sha256: the bundle's signed length and digest.
        model, version, stage: the registry version.
        registry_version: the registry's full record of the version.
        already_published: nothing changed; this exact bundle was published before.
    """

    target_name: str
    length: int
    sha256: str
    model: str
    version: str
    stage: str
    registry_version: dict[str, Any]
    already_published: bool


def target_name_for(name: str, version: str) -> str:
    """The fixed target name of a release (same as the bundle file name convention)."""
    return f"{name}-{version}.tar"


def publish_release(bundle_path: Path, data_dir: Path, key_dirs: Sequence[Path],
                    actor: Actor, *, store: Any = None) -> PublishResult:
    """Publish ``bundle_path`` into the server data directory ``data_dir``.

    Args:
        key_dirs: folders to load signing keys from (``data_dir/"keys"`` and the offline
            folder when the image targets key is kept offline).
        actor: who publishes (audited).
        store: an open ``Store`` of the server (default: open ``data_dir``'s database).

    Raises:
        PublishError: invalid bundle, server data dir or repositories not initialised,
            name/version taken by other bytes.
        MissingSigningKeyError: the image targets key is not in ``key_dirs``.
        KeyMaterialError: a key file is unsafe or unreadable.
    """
    from edgefleet.agent.update.bundle import BundleError, extract_bundle, file_sha256
    from edgefleet.fleet_server.registry.errors import RegistryError

    bundle_path = Path(bundle_path)
    repo = Repository(Path(data_dir) / "repo", load_signers(list(key_dirs)))
    if not repo.layout.is_initialised():
        raise PublishError(f"no update repositories in {data_dir}: run `edgefleet keys init`")
    own_store = store is None
    if own_store:
        store = _open_store(Path(data_dir))
    try:
        with tempfile.TemporaryDirectory(prefix="edgefleet-publish-") as tmp:
            try:
                manifest = extract_bundle(bundle_path, tmp)
            except (BundleError, OSError) as e:
                raise PublishError(f"{bundle_path} is not a valid bundle: {e}") from e
            sha256 = file_sha256(bundle_path)
            length = bundle_path.stat().st_size
            target = target_name_for(manifest.name, manifest.version)
            registry = _registry(store, Path(data_dir))
            try:
                check_target_name(target)
                existing = _registered(registry, manifest, sha256)
                listed = _listed(repo, target, sha256, length)
                if existing is not None and listed:
                    log.info("%s is already published", target)
                    return _result(target, length, sha256, existing, already=True)
                if not listed:
                    _add(repo, bundle_path, target)
                if existing is None:
                    existing = _register(registry, store, manifest, Path(tmp), target=target,
                                         sha256=sha256, length=length, actor=actor)
            except InvalidRequest as e:
                raise PublishError(str(e)) from e
            except RegistryError as e:
                raise PublishError(f"cannot register {manifest.name} {manifest.version}: "
                                   f"{e}") from e
            return _result(target, length, sha256, existing, already=False)
    finally:
        if own_store:
            store.close()


def _open_store(data_dir: Path) -> Any:
    from edgefleet.fleet_server.app import all_components
    from edgefleet.fleet_server.config import ConfigError, load_config
    from edgefleet.fleet_server.datadir import DataDirError, load_secrets
    from edgefleet.fleet_server.storage import StorageError, Store

    try:
        load_secrets(data_dir)
        config = load_config(data_dir)
        store = Store.open(config.db_path)
    except (DataDirError, ConfigError, StorageError) as e:
        raise PublishError(str(e)) from e
    try:
        store.migrate(all_components())
    except StorageError as e:
        store.close()
        raise PublishError(str(e)) from e
    return store


def _registry(store: Any, data_dir: Path) -> Any:
    from edgefleet.fleet_server.registry.artifacts import ArtifactStore
    from edgefleet.fleet_server.registry.service import RegistryService

    # The operator on the server machine is trusted with any model size: no upload cap.
    return RegistryService(store, AuditLog(store), ArtifactStore(data_dir / "artifacts"))


def _registered(registry: Any, manifest: Any, sha256: str) -> dict[str, Any] | None:
    """The registry's record if this exact bundle was registered; None if the version is
    free. Raises PublishError if the version holds something else."""
    from edgefleet.fleet_server.registry.errors import NotFoundError
    from edgefleet.fleet_server.registry.metadata import check_name, check_version

    check_name(manifest.name)  # refused before anything is signed
    check_version(manifest.version)
    try:
        record: dict[str, Any] = registry.get_version(manifest.name, manifest.version)
    except NotFoundError:
        return None
    lineage = record.get("lineage") or {}
    if (record.get("digest") == f"sha256:{manifest.model_sha256}"
            and lineage.get("bundle_sha256") == sha256):
        return record
    raise PublishError(f"model {manifest.name} already has a version {manifest.version} "
                       "from other content; versions are immutable: build with a new --version")


def _listed(repo: Repository, target: str, sha256: str, length: int) -> bool:
    listed = repo.targets().get(target)
    if listed is None:
        return False
    if listed.hashes.get("sha256") != sha256 or listed.length != length:
        raise PublishError(f"the image repository lists {target} with other content; "
                           "released bundles are immutable: build with a new --version")
    return True


def _add(repo: Repository, bundle_path: Path, target: str) -> None:
    try:
        repo.add_bundle(bundle_path, target)
    except MissingSigningKeyError as e:
        raise MissingSigningKeyError(
            f"cannot sign {target}: the image targets key is not available ({e}); pass the "
            "offline key folder (--offline-dir) given to `edgefleet keys init`") from e
    except InvalidRequest as e:
        raise PublishError(str(e)) from e


def _register(registry: Any, store: Any, manifest: Any, folder: Path, *, target: str,
              sha256: str, length: int, actor: Actor) -> dict[str, Any]:
    from edgefleet.fleet_server.registry.errors import NotFoundError
    from edgefleet.fleet_server.registry.metadata import UploadMetadata

    lineage = {k: v for k, v in manifest.lineage.items() if isinstance(v, str) and v}
    lineage |= {"bundle": target, "bundle_sha256": sha256}
    parent = manifest.lineage.get("parent_version") or manifest.lineage.get("parent")
    if parent:
        ref = UploadMetadata(parent=parent).parent_ref(manifest.name)
        assert ref is not None
        try:
            registry.get_version(*ref)
        except NotFoundError:
            log.info("parent %s@%s is not registered; kept in the lineage only", *ref)
            parent = None
    metadata = UploadMetadata(
        description=f"release bundle {target}",
        metrics=dict(manifest.metrics),
        reference_profile=dict(manifest.reference_profile or {}),
        parent=parent or None,
        lineage=lineage,
    )
    with (folder / manifest.model_file).open("rb") as f:
        record: dict[str, Any] = registry.upload(manifest.name, manifest.version, f,
                                                 metadata, actor)
    with store.transaction():
        AuditLog(store).record(actor, "release.publish", "release", target, None, {
            "target": target, "length": length, "bundle_sha256": sha256,
            "model": manifest.name, "version": manifest.version,
        })
    log.info("published %s as %s@%s", target, manifest.name, manifest.version)
    return record


def _result(target: str, length: int, sha256: str, record: dict[str, Any], *,
            already: bool) -> PublishResult:
    return PublishResult(target_name=target, length=length, sha256=sha256,
                         model=str(record["model"]), version=str(record["version"]),
                         stage=str(record["stage"]), registry_version=record,
                         already_published=already)
