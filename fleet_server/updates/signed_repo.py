"""One TUF repository on disk: load, sign and publish its top-level metadata.

Used for the image repository and for each device's director repository (which share one
director root). Versions only ever go up; snapshot and targets are written under new
versioned names (consistent snapshots) and ``timestamp.json`` / ``root.json`` are replaced
atomically (temp file, fsync, rename), so a concurrent reader always sees a complete,
consistent repository state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
)

from edgefleet.agent.update.state import atomic_write_bytes
from edgefleet.fleet_server.updates.errors import MissingSigningKeyError, RepositoryStateError
from edgefleet.fleet_server.updates.keys import RepoKind, RoleName, Signers

log = logging.getLogger(__name__)

DAY_S = 86400


@dataclass(frozen=True)
class ExpiryPolicy:
    """Lifetimes of signed metadata (seconds) and how early the server re-signs."""

    root_s: int = 365 * DAY_S
    image_targets_s: int = 365 * DAY_S
    image_snapshot_s: int = 7 * DAY_S
    image_timestamp_s: int = DAY_S
    director_s: int = DAY_S          # director targets, snapshot and timestamp: short-lived
    refresh_before_s: int = 6 * 3600  # re-sign when less than this is left

    def lifetime_s(self, kind: RepoKind, role: RoleName) -> int:
        if role is RoleName.ROOT:
            return self.root_s
        if kind is RepoKind.DIRECTOR:
            return self.director_s
        return {RoleName.TARGETS: self.image_targets_s, RoleName.SNAPSHOT: self.image_snapshot_s,
                RoleName.TIMESTAMP: self.image_timestamp_s}[role]


Clock = Callable[[], datetime]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _meta_file(version: int, data: bytes) -> MetaFile:
    return MetaFile(version=version, length=len(data),
                    hashes={"sha256": hashlib.sha256(data).hexdigest()})


class SignedRepo:
    """The top-level metadata of one repository in ``metadata_dir`` (root in ``root_dir``)."""

    def __init__(self, kind: RepoKind, metadata_dir: Path, root_dir: Path, *,
                 signers: Signers, expiry: ExpiryPolicy, clock: Clock) -> None:
        self.kind = kind
        self.metadata_dir = metadata_dir
        self.root_dir = root_dir
        self.signers = signers
        self.expiry = expiry
        self.clock = clock

    # -- reading ---------------------------------------------------------------------------
    def _load(self, path: Path, cls: type[Signed]) -> Metadata[Any]:
        try:
            md: Metadata[Any] = Metadata.from_file(str(path))
        except (OSError, ValueError) as e:
            raise RepositoryStateError(f"cannot read {path}: {e}") from e
        if not isinstance(md.signed, cls):
            raise RepositoryStateError(f"{path} is not {cls.type} metadata")
        return md

    def exists(self) -> bool:
        return (self.metadata_dir / "timestamp.json").is_file()

    def root(self) -> Metadata[Root]:
        return self._load(self.root_dir / "root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load(self.metadata_dir / "timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        version = self.timestamp().signed.snapshot_meta.version
        return self._load(self.metadata_dir / f"{version}.snapshot.json", Snapshot)

    def targets(self) -> Metadata[Targets]:
        version = self.snapshot().signed.meta["targets.json"].version
        return self._load(self.metadata_dir / f"{version}.targets.json", Targets)

    # -- signing ---------------------------------------------------------------------------
    def _expires(self, role: RoleName) -> datetime:
        return self.clock() + timedelta(seconds=self.expiry.lifetime_s(self.kind, role))

    def sign(self, md: Metadata[Any], role: RoleName, root: Root | None = None) -> None:
        """Sign ``md`` with every available key of ``role`` listed in ``root``.

        Raises:
            MissingSigningKeyError: fewer keys at hand than the role's threshold.
        """
        root = root or self.root().signed
        delegation = root.roles[role.value]
        signers = self.signers.for_keyids(self.kind, role, delegation.keyids)
        if len(signers) < delegation.threshold:
            raise MissingSigningKeyError(
                f"{self.kind.value} {role.value} needs {delegation.threshold} key(s), "
                f"{len(signers)} available (is an offline key directory missing?)")
        md.signatures.clear()
        for signer in signers:
            try:
                md.sign(signer, append=True)
            except UnsignedMetadataError as e:
                raise MissingSigningKeyError(f"signing {role.value} failed: {e}") from e

    # -- writing ---------------------------------------------------------------------------
    def write_root(self, md: Metadata[Root]) -> None:
        """Store a (signed) root as ``N.root.json`` and as the current ``root.json``."""
        data = md.to_bytes()
        atomic_write(self.root_dir / f"{md.signed.version}.root.json", data)
        atomic_write(self.root_dir / "root.json", data)

    def publish_targets(self, targets: Targets) -> Metadata[Targets]:
        """Sign and store ``targets`` as the next version, then snapshot and timestamp.

        Raises:
            MissingSigningKeyError: a needed key is not available.
        """
        root = self.root().signed
        previous = self.targets().signed.version if self.exists() else 0
        targets.version = previous + 1
        targets.expires = self._expires(RoleName.TARGETS)
        md = Metadata(targets)
        self.sign(md, RoleName.TARGETS, root)
        data = md.to_bytes()
        atomic_write(self.metadata_dir / f"{targets.version}.targets.json", data)
        self._publish_snapshot(_meta_file(targets.version, data), root)
        return md

    def _publish_snapshot(self, targets_meta: MetaFile, root: Root) -> None:
        previous = self.snapshot().signed.version if self.exists() else 0
        snapshot = Snapshot(version=previous + 1, expires=self._expires(RoleName.SNAPSHOT),
                            meta={"targets.json": targets_meta})
        md = Metadata(snapshot)
        self.sign(md, RoleName.SNAPSHOT, root)
        data = md.to_bytes()
        atomic_write(self.metadata_dir / f"{snapshot.version}.snapshot.json", data)
        self._publish_timestamp(_meta_file(snapshot.version, data), root)

    def _publish_timestamp(self, snapshot_meta: MetaFile, root: Root) -> None:
        previous = self.timestamp().signed.version if self.exists() else 0
        timestamp = Timestamp(version=previous + 1, expires=self._expires(RoleName.TIMESTAMP),
                              snapshot_meta=snapshot_meta)
        md = Metadata(timestamp)
        self.sign(md, RoleName.TIMESTAMP, root)
        atomic_write(self.metadata_dir / "timestamp.json", md.to_bytes())

    def resign(self, role: RoleName) -> None:
        """Re-sign ``role`` (and the roles above it) as new versions with fresh expiry.

        Raises:
            MissingSigningKeyError: a needed key is not available.
        """
        root = self.root().signed
        if role is RoleName.TARGETS:
            self.publish_targets(self.targets().signed)
        elif role is RoleName.SNAPSHOT:
            self._publish_snapshot(self.snapshot().signed.meta["targets.json"], root)
        elif role is RoleName.TIMESTAMP:
            self._publish_timestamp(self.timestamp().signed.snapshot_meta, root)
        else:
            raise ValueError("root is re-signed through Repository.rotate_key")

    def refresh_expiring(self, now: datetime) -> list[RoleName]:
        """Re-sign the roles that expire within ``expiry.refresh_before_s`` of ``now``.

        Image targets are re-signed only when their (offline) key is at hand; otherwise a
        warning is logged and the role is skipped. Returns the roles re-signed.
        """
        horizon = now + timedelta(seconds=self.expiry.refresh_before_s)
        for role, md in ((RoleName.TARGETS, self.targets()), (RoleName.SNAPSHOT, self.snapshot()),
                         (RoleName.TIMESTAMP, self.timestamp())):
            if md.signed.expires > horizon:
                continue
            try:
                self.resign(role)
            except MissingSigningKeyError as e:
                log.warning("%s %s expires %s but cannot be re-signed here: %s",
                            self.kind.value, role.value, md.signed.expires, e)
                continue
            # resigning a role re-signs every role below it in the list as well
            return [r for r in (RoleName.TARGETS, RoleName.SNAPSHOT, RoleName.TIMESTAMP)
                    if _order(r) >= _order(role)]
        return []


def _order(role: RoleName) -> int:
    return {RoleName.TARGETS: 0, RoleName.SNAPSHOT: 1, RoleName.TIMESTAMP: 2}[role]
