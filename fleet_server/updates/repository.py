"""The image and director repositories of the Uptane-style update design.

* The **image repository** lists every released bundle as a TUF target (name, length,
  sha256). Its targets role is signed by an offline-capable key; adding a bundle needs it.
* The **director repository** is one TUF repository *per device*: its targets metadata
  holds exactly the one bundle the device should run now, with the image repository's
  length and hashes and ``custom: {"edgefleet": {"device_id": ...}}`` binding it to the
  device. Per-device repositories (rather than one director targets file with delegations)
  give each device its own version counter and expiry and keep what a device downloads
  small and private to it. All devices' director repositories share one director root
  (director keys are online; the director root key can be kept offline).

``Repository`` serialises writers across threads and processes (an flock on
``<repo>/.lock``); ``refresh_expiring`` is what the scheduler calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets

from edgefleet.fleet_server.updates.errors import (
    InvalidRequest,
    MissingSigningKeyError,
    RepositoryStateError,
    UnknownTargetError,
)
from edgefleet.fleet_server.updates.keys import (
    KeyPolicy,
    RepoKind,
    RoleName,
    Signers,
    delete_key_files,
    generate_key,
)
from edgefleet.fleet_server.updates.layout import RepoLayout, check_device_id, check_target_name
from edgefleet.fleet_server.updates.signed_repo import (
    BatchPublisher,
    Clock,
    ExpiryPolicy,
    SignedRepo,
    atomic_write,
    current_targets,
)

log = logging.getLogger(__name__)

CUSTOM_KEY = "edgefleet"
_LOGGED = 5  # per batch, the first few assignments are logged one by one


@dataclass(frozen=True)
class Assignment:
    """One device's director assignment: ``target`` to run, optionally ``shadow_target``
    in shadow mode on a ``shadow_rate`` share of its inputs (see :meth:`Repository.assign`).
    """

    device_id: str
    target: str
    shadow_target: str | None = None
    shadow_rate: float = 0.1


def _checked(a: Assignment) -> tuple[Assignment, dict[str, object]]:
    """``a`` validated, with the ``custom.edgefleet`` part of its signed target.

    Raises:
        InvalidRequest: bad device id or target name, or ``shadow_rate`` not in (0, 1].
    """
    check_device_id(a.device_id)
    check_target_name(a.target)
    custom: dict[str, object] = {"device_id": a.device_id}
    if a.shadow_target is not None:
        check_target_name(a.shadow_target)
        rate = a.shadow_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < rate <= 1.0:
            raise InvalidRequest(f"shadow_rate must be in (0, 1], got {rate!r}")
        # TUF signs canonical JSON, which has no floats: the rate is a decimal string
        custom["shadow"] = {"target": a.shadow_target, "sample_rate": repr(float(rate))}
    return a, custom


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Repository:
    """Both repositories under ``directory``, signed with ``signers``."""

    def __init__(self, directory: Path, signers: Signers, expiry: ExpiryPolicy | None = None,
                 clock: Clock | None = None) -> None:
        self.layout = RepoLayout(directory)
        self.signers = signers
        self.expiry = expiry or ExpiryPolicy()
        self.clock: Clock = clock or utc_now
        self._lock = threading.RLock()
        self._lock_depth = 0
        self.image = SignedRepo(RepoKind.IMAGE, self.layout.image_metadata,
                                self.layout.image_metadata, signers=signers, expiry=self.expiry,
                                clock=self.clock)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers: threads of this process (RLock) and other processes (the CLI
        publishing while the server re-signs) through an flock on ``<repo>/.lock``."""
        with self._lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            self.layout.root.mkdir(parents=True, exist_ok=True)
            with (self.layout.root / ".lock").open("a") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- setup -----------------------------------------------------------------------------
    def initialise(self, policy: KeyPolicy | None = None) -> None:
        """Write version 1 of both roots and an empty image repository.

        Raises:
            RepositoryStateError: the repositories exist already.
            MissingSigningKeyError: a key of either repository is missing.
        """
        policy = policy or KeyPolicy()
        with self._locked():
            if (self.layout.image_metadata / "root.json").exists():
                raise RepositoryStateError(f"{self.layout.root} is already initialised")
            for kind, repo in ((RepoKind.IMAGE, self.image), (RepoKind.DIRECTOR,
                                                              self._director_repo(None))):
                root = Root(expires=self.clock() + timedelta(seconds=self.expiry.root_s),
                            consistent_snapshot=True)
                for role in RoleName:
                    keys = self.signers.public_keys(kind, role)
                    if not keys:
                        raise MissingSigningKeyError(f"no {kind.value} {role.value} key")
                    for key in keys:
                        root.add_key(key, role.value)
                    if (kind, role) == (RepoKind.IMAGE, RoleName.ROOT):
                        root.roles[role.value].threshold = policy.image_root_threshold
                md = Metadata(root)
                repo.sign(md, RoleName.ROOT, root)
                repo.write_root(md)
            self.image.publish_targets(Targets())
            self.layout.image_targets.mkdir(parents=True, exist_ok=True)

    def _require(self) -> None:
        if not self.layout.is_initialised():
            raise RepositoryStateError(f"no repositories in {self.layout.root}: run keys init")

    def _director_repo(self, device_id: str | None) -> SignedRepo:
        metadata_dir = (self.layout.director_metadata(device_id) if device_id
                        else self.layout.director_root)
        return SignedRepo(RepoKind.DIRECTOR, metadata_dir, self.layout.director_root,
                          signers=self.signers, expiry=self.expiry, clock=self.clock)

    def _device_ids(self) -> list[str]:
        base = self.layout.director_devices
        return sorted(p.name for p in base.iterdir()) if base.is_dir() else []

    # -- image repository ------------------------------------------------------------------
    def targets(self) -> dict[str, TargetFile]:
        """Every bundle the image repository lists, by target name."""
        self._require()
        return dict(self.image.targets().signed.targets)

    def add_bundle(self, path: Path, name: str | None = None) -> TargetFile:
        """List the file at ``path`` as target ``name`` (default: its file name).

        Adding the same bytes under the same name again is a no-op; other bytes under an
        existing name are refused (released bundles are immutable).

        Raises:
            InvalidRequest: bad name, or the name is taken by other bytes.
            MissingSigningKeyError: the (offline) image targets key is not available.
        """
        name = check_target_name(name or path.name)
        with self._locked():
            self._require()
            targets = self.image.targets().signed
            new = TargetFile.from_file(name, str(path), ["sha256"])
            existing = targets.targets.get(name)
            if existing is not None:
                if existing.hashes == new.hashes and existing.length == new.length:
                    return existing
                raise InvalidRequest(f"target {name} already exists with other content")
            stored = self.layout.image_targets / f"{new.hashes['sha256']}.{name}"
            tmp = stored.with_name(".tmp-" + stored.name)
            stored.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tmp)
            if _sha256_file(tmp) != new.hashes["sha256"]:
                tmp.unlink()
                raise InvalidRequest(f"{path} changed while it was being added")
            tmp.replace(stored)
            targets.targets[name] = new
            try:
                self.image.publish_targets(targets)
            except Exception:
                stored.unlink(missing_ok=True)  # never leave an unlisted file behind
                raise
            log.info("image repository lists %s (%d bytes)", name, new.length)
            return new

    # -- director repository ---------------------------------------------------------------
    def assign(self, device_id: str, target_name: str, *, shadow_target: str | None = None,
               shadow_rate: float = 0.1) -> TargetFile:
        """Make ``target_name`` the one bundle ``device_id`` should run (a new version).

        The director copies the image repository's length and hashes, so a device accepts
        the assignment only if both repositories agree on them. ``shadow_target`` names a
        candidate the device runs in shadow mode on a ``shadow_rate`` share of its real
        inputs (never served; see docs/updater.md): it is signed into the assignment's
        ``custom.edgefleet.shadow`` as ``{"target": name, "sample_rate": "0.1"}`` (the
        rate as a decimal string: canonical JSON, which TUF signs, has no floats); the
        device takes the candidate's length and hashes from the image repository.
        One device's case of :meth:`assign_many`.

        Raises:
            InvalidRequest: bad device id or target name, or ``shadow_rate`` not in (0, 1].
            UnknownTargetError: the image repository does not list the target (or the
                shadow target).
            MissingSigningKeyError: a director key is not available.
        """
        return self.assign_many([Assignment(device_id, target_name, shadow_target,
                                            shadow_rate)])[device_id]

    def assign_many(self, assignments: Sequence[Assignment]) -> dict[str, TargetFile]:
        """Sign every one of ``assignments`` (see :meth:`assign`) in one batch; returns
        the assigned target of each device.

        Every assignment is checked before anything is signed (all or nothing for bad
        input). The image targets, the director root and its signers are read once per
        batch; each device still gets its own targets, snapshot and timestamp versions,
        published with two filesystem barriers per batch (:class:`BatchPublisher`): a
        crash leaves each device's repository wholly old or wholly new. Keep batches to a
        few hundred devices: the repository lock is held throughout.

        Raises:
            InvalidRequest: a bad device id, target name or shadow rate, or a device twice.
            UnknownTargetError: the image repository does not list a target.
            MissingSigningKeyError: a director key is not available.
        """
        checked = [_checked(a) for a in assignments]
        if len({a.device_id for a, _ in checked}) != len(checked):
            raise InvalidRequest("a device appears twice in one batch of assignments")
        if not checked:
            return {}
        with self._locked():
            self._require()
            listed_targets = self.image.targets().signed.targets
            publisher = BatchPublisher(RepoKind.DIRECTOR, self._director_repo(None).root().signed,
                                       self.signers, self.expiry, self.clock())
            out: dict[str, TargetFile] = {}
            for a, custom in checked:
                listed = listed_targets.get(a.target)
                if listed is None:
                    raise UnknownTargetError(f"the image repository does not list {a.target}")
                if a.shadow_target is not None and a.shadow_target not in listed_targets:
                    raise UnknownTargetError(
                        f"the image repository does not list the shadow target "
                        f"{a.shadow_target}")
                out[a.device_id] = TargetFile(listed.length, dict(listed.hashes), a.target,
                                              {"custom": {CUSTOM_KEY: custom}})
            try:
                for a, _ in checked:
                    publisher.stage(self.layout.director_metadata(a.device_id),
                                    Targets(targets={a.target: out[a.device_id]}))
                publisher.commit(self.layout.root)
            except BaseException:
                publisher.discard()
                raise
        for a, _ in checked[:_LOGGED]:
            log.info("director assigns %s to device %s%s", a.target, a.device_id,
                     "" if a.shadow_target is None else f" (shadow {a.shadow_target})")
        if len(checked) > _LOGGED:
            log.info("director assigns %d more device(s)", len(checked) - _LOGGED)
        return out

    def assignment(self, device_id: str) -> TargetFile | None:
        """The bundle currently assigned to ``device_id``, if any."""
        director = self._director_repo(check_device_id(device_id))
        if not director.exists():
            return None
        targets = director.targets().signed.targets
        return next(iter(targets.values()), None)

    def assigned_targets(self, device_ids: Sequence[str]) -> dict[str, str | None]:
        """The name of the bundle currently assigned to each of ``device_ids`` (None:
        nothing assigned), read without building metadata objects: for many devices.

        Raises:
            InvalidRequest: a bad device id.
            RepositoryStateError: a device's director metadata is unreadable.
        """
        out: dict[str, str | None] = {}
        for device_id in device_ids:
            targets = current_targets(self.layout.director_metadata(device_id))
            out[device_id] = next(iter(targets), None) if targets else None
        return out

    # -- maintenance -----------------------------------------------------------------------
    def refresh_expiring(self, now: datetime | None = None) -> list[str]:
        """Re-sign metadata that expires soon, in both repositories (for the scheduler).

        Returns what was re-signed, e.g. ``["image/timestamp", "director/dev-1/targets"]``.
        """
        now = now or self.clock()
        done: list[str] = []
        with self._locked():
            self._require()
            done += [f"image/{r.value}" for r in self.image.refresh_expiring(now)]
            for device_id in self._device_ids():
                director = self._director_repo(device_id)
                if director.exists():
                    done += [f"director/{device_id}/{r.value}"
                             for r in director.refresh_expiring(now)]
        if done:
            log.info("re-signed %s", ", ".join(done))
        return done

    def rotate_key(self, kind: RepoKind, role: RoleName,
                   key_dirs: Sequence[Path]) -> list[str]:
        """Replace every key of ``kind``/``role`` by a new one through a new root version.

        The new root is signed by a threshold of the old root keys and of the new ones, so
        devices follow it and from then on refuse metadata signed by the old key. The new
        private key is written to ``key_dirs[0]``; the old key files are deleted from
        ``key_dirs``. Returns the new keyids.

        Raises:
            MissingSigningKeyError: the root keys (old or new) do not reach their threshold.
        """
        if not key_dirs:
            raise ValueError("key_dirs must name at least the directory for the new key")
        with self._locked():
            self._require()
            repo = self.image if kind is RepoKind.IMAGE else self._director_repo(None)
            old_md = repo.root()
            root: Root = Metadata[Root].from_bytes(old_md.to_bytes()).signed
            old_keyids = list(root.roles[role.value].keyids)
            old_root_role = old_md.signed.roles["root"]
            have = self.signers.for_keyids(kind, RoleName.ROOT, old_root_role.keyids)
            if len(have) < old_root_role.threshold:
                raise MissingSigningKeyError(
                    f"rotating needs {old_root_role.threshold} {kind.value} root key(s), "
                    f"{len(have)} available (is the offline key directory missing?)")
            new_signers = [generate_key(key_dirs[0], kind, role) for _ in old_keyids]
            new_ids = [s.public_key.keyid for s in new_signers]
            for keyid in old_keyids:
                root.revoke_key(keyid, role.value)
            for signer in new_signers:
                root.add_key(signer.public_key, role.value)
                self.signers.add(kind, role, signer)
            root.version += 1
            root.expires = self.clock() + timedelta(seconds=self.expiry.root_s)
            new_md = Metadata(root)
            try:
                self._sign_root(kind, new_md, old_md.signed)
                repo.write_root(new_md)
            except Exception:
                for keyid in new_ids:  # nothing was published: forget the new keys
                    self.signers.remove(kind, role, keyid)
                delete_key_files(key_dirs[:1], kind, role, new_ids)
                raise
            for keyid in old_keyids:
                self.signers.remove(kind, role, keyid)
            delete_key_files(key_dirs, kind, role, old_keyids)
            if role is not RoleName.ROOT:
                repos = [self.image] if kind is RepoKind.IMAGE else [
                    self._director_repo(d) for d in self._device_ids()]
                for each in repos:
                    if each.exists():
                        each.resign(role)
            log.info("rotated %s %s key: root version %d", kind.value, role.value,
                     root.version)
            return new_ids

    def _sign_root(self, kind: RepoKind, md: Metadata[Root], old_root: Root) -> None:
        keyids = set(old_root.roles["root"].keyids) | set(md.signed.roles["root"].keyids)
        for signer in self.signers.for_keyids(kind, RoleName.ROOT, keyids):
            md.sign(signer, append=True)
        for trusted in (old_root, md.signed):
            try:
                trusted.verify_delegate("root", md.signed_bytes, md.signatures)
            except UnsignedMetadataError as e:
                raise MissingSigningKeyError(
                    f"new {kind.value} root lacks a threshold of root signatures: {e}") from e


def store_root_copy(repo: Repository, kind: RepoKind, destination: Path) -> Path:
    """Copy the current root of ``kind`` to ``destination`` (provisioning a device)."""
    source = (repo.layout.image_metadata if kind is RepoKind.IMAGE
              else repo.layout.director_root) / "root.json"
    atomic_write(destination, source.read_bytes())
    return destination

