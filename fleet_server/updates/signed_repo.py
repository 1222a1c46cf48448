"""One TUF repository on disk: load, sign and publish its top-level metadata.

Used for the image repository and for each device's director repository (which share one
director root). Versions only ever go up; snapshot and targets are written under new
versioned names (consistent snapshots) and ``timestamp.json`` / ``root.json`` are replaced
atomically (temp file, fsync, rename), so a concurrent reader always sees a complete,
consistent repository state.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no C library to load (not Linux)
    _LIBC = None


def sync_filesystem(path: Path) -> None:
    """Make every write and rename on the filesystem holding ``path`` durable (Linux
    ``syncfs``; ``os.sync`` elsewhere): the barrier of :class:`BatchPublisher`.

    Raises:
        OSError: the kernel reports a write-back error.
    """
    syncfs = getattr(_LIBC, "syncfs", None) if _LIBC is not None else None
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)



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
        _sign_with(md, role, role_signers(self.signers, self.kind, root or self.root().signed,
                                          role))

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


def role_signers(signers: Signers, kind: RepoKind, root: Root,
                 role: RoleName) -> list[Any]:
    """The signers at hand for ``role`` as ``root`` delegates it.

    Raises:
        MissingSigningKeyError: fewer keys at hand than the role's threshold.
    """
    delegation = root.roles[role.value]
    found = signers.for_keyids(kind, role, delegation.keyids)
    if len(found) < delegation.threshold:
        raise MissingSigningKeyError(
            f"{kind.value} {role.value} needs {delegation.threshold} key(s), "
            f"{len(found)} available (is an offline key directory missing?)")
    return found


def _sign_with(md: Metadata[Any], role: RoleName, signers: list[Any]) -> None:
    md.signatures.clear()
    for signer in signers:
        try:
            md.sign(signer, append=True)
        except UnsignedMetadataError as e:
            raise MissingSigningKeyError(f"signing {role.value} failed: {e}") from e


def _read_signed(path: Path) -> dict[str, Any]:
    """The ``signed`` part of a metadata file as plain JSON (versions only: no objects
    built, no signature checked, as ``SignedRepo`` reads its own files)."""
    try:
        signed = json.loads(path.read_bytes())["signed"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RepositoryStateError(f"cannot read {path}: {e}") from e
    if not isinstance(signed, dict):
        raise RepositoryStateError(f"{path} has no signed part")
    return signed


def current_versions(metadata_dir: Path) -> tuple[int, int, int]:
    """Versions of (targets, snapshot, timestamp) published in ``metadata_dir`` (all 0
    for a repository not published yet).

    Raises:
        RepositoryStateError: a metadata file is missing or unreadable.
    """
    timestamp_path = metadata_dir / "timestamp.json"
    if not timestamp_path.is_file():
        return 0, 0, 0
    timestamp = _read_signed(timestamp_path)
    try:
        snapshot_version = int(timestamp["meta"]["snapshot.json"]["version"])
        snapshot = _read_signed(metadata_dir / f"{snapshot_version}.snapshot.json")
        return (int(snapshot["meta"]["targets.json"]["version"]), snapshot_version,
                int(timestamp["version"]))
    except (KeyError, TypeError, ValueError) as e:
        raise RepositoryStateError(f"unreadable metadata in {metadata_dir}: {e}") from e


def current_targets(metadata_dir: Path) -> dict[str, Any] | None:
    """The ``targets`` map (plain JSON) published in ``metadata_dir``; None when the
    repository is not published yet (a fast read for many repositories at once).

    Raises:
        RepositoryStateError: a metadata file is missing or unreadable.
    """
    targets_version, _, _ = current_versions(metadata_dir)
    if not targets_version:
        return None
    signed = _read_signed(metadata_dir / f"{targets_version}.targets.json")
    targets = signed.get("targets")
    if not isinstance(targets, dict):
        raise RepositoryStateError(f"{metadata_dir}: targets metadata without targets")
    return targets


@dataclass
class BatchPublisher:
    """Publishes new targets (then snapshot and timestamp) in many repositories of one
    kind that share one root, e.g. every device's director repository in a wave.

    The root is read and the signers looked up once. Crash safety is that of
    :meth:`SignedRepo.publish_targets` with two filesystem barriers per batch instead of
    two fsyncs per file: :meth:`stage` writes each repository's versioned targets and
    snapshot (new names, not referenced yet) and its new timestamp as a temp file;
    :meth:`commit` makes all of that durable (``syncfs``), renames every temp file over
    its ``timestamp.json`` (atomic: a reader sees the old or the new complete state) and
    makes the renames durable. A crash before the renames leaves every repository as it
    was (plus unreferenced versioned files that the next publish overwrites); a crash
    after leaves each one old or new. :meth:`discard` removes the temp files of a batch
    that is not committed.
    """

    kind: RepoKind
    root: Root
    signers: Signers
    expiry: ExpiryPolicy
    now: datetime
    _staged: list[tuple[Path, Path]] = field(default_factory=list)
    _dirs: set[Path] = field(default_factory=set)
    _by_role: dict[RoleName, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in (RoleName.TARGETS, RoleName.SNAPSHOT, RoleName.TIMESTAMP):
            self._by_role[role] = role_signers(self.signers, self.kind, self.root, role)

    def _expires(self, role: RoleName) -> datetime:
        return self.now + timedelta(seconds=self.expiry.lifetime_s(self.kind, role))

    def _signed_bytes(self, signed: Signed, role: RoleName) -> bytes:
        md: Metadata[Any] = Metadata(signed)
        _sign_with(md, role, self._by_role[role])
        return md.to_bytes()

    def stage(self, metadata_dir: Path, targets: Targets) -> Targets:
        """Sign ``targets`` as the next version of the repository in ``metadata_dir``,
        with a new snapshot and timestamp; nothing is visible before :meth:`commit`.

        Raises:
            RepositoryStateError: the repository's current metadata is unreadable.
            ValueError: the repository is staged twice in one batch.
        """
        if metadata_dir in self._dirs:
            raise ValueError(f"{metadata_dir} is staged twice in one batch")
        self._dirs.add(metadata_dir)
        targets_v, snapshot_v, timestamp_v = current_versions(metadata_dir)
        metadata_dir.mkdir(parents=True, exist_ok=True)
        targets.version = targets_v + 1
        targets.expires = self._expires(RoleName.TARGETS)
        data = self._signed_bytes(targets, RoleName.TARGETS)
        _write_unsynced(metadata_dir / f"{targets.version}.targets.json", data)
        snapshot = Snapshot(version=snapshot_v + 1, expires=self._expires(RoleName.SNAPSHOT),
                            meta={"targets.json": _meta_file(targets.version, data)})
        data = self._signed_bytes(snapshot, RoleName.SNAPSHOT)
        _write_unsynced(metadata_dir / f"{snapshot.version}.snapshot.json", data)
        timestamp = Timestamp(version=timestamp_v + 1,
                              expires=self._expires(RoleName.TIMESTAMP),
                              snapshot_meta=_meta_file(snapshot.version, data))
        tmp = _temp_file(metadata_dir / "timestamp.json",
                         self._signed_bytes(timestamp, RoleName.TIMESTAMP))
        self._staged.append((tmp, metadata_dir / "timestamp.json"))
        return targets

    def commit(self, barrier_path: Path) -> None:
        """Publish everything staged: barrier, rename every timestamp, barrier
        (``barrier_path``: any path on the repositories' filesystem).

        Raises:
            OSError: a write, rename or barrier failed (renames done so far stand).
        """
        if not self._staged:
            return
        sync_filesystem(barrier_path)
        staged, self._staged = self._staged, []
        self._dirs.clear()
        try:
            for tmp, final in staged:
                os.replace(tmp, final)
        except BaseException:
            self._staged = [(t, f) for t, f in staged if t.exists()]
            self.discard()
            raise
        sync_filesystem(barrier_path)

    def discard(self) -> None:
        """Remove the temp files of what is staged and not committed."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged = []
        self._dirs.clear()


def _temp_file(final: Path, data: bytes) -> Path:
    """``data`` in a new temp file beside ``final`` (not synced: the batch barrier is)."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _write_unsynced(path: Path, data: bytes) -> None:
    """Write a new versioned metadata file without fsync: nothing references it until the
    batch's first barrier (a crash may leave it partial; the next publish rewrites it)."""
    with path.open("wb") as f:
        f.write(data)


def _order(role: RoleName) -> int:
    return {RoleName.TARGETS: 0, RoleName.SNAPSHOT: 1, RoleName.TIMESTAMP: 2}[role]
