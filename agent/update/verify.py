"""Device-side verification of an update, Uptane-style, with ``tuf.ngclient.Updater``.

Two TUF clients, one per repository, each keeping its trusted metadata in its own
directory below the device's state dir:

1. refresh the **director** repository (this device's metadata): it must assign exactly
   one target, bound to *this* device id (``custom.edgefleet.device_id``);
2. refresh the **image** repository: it must list the same target name with the same
   length and the same hashes;
3. download the target from the image repository, capped at the signed length and
   verified against the signed hashes (ngclient does both), into a temp file that is
   renamed into place only once verified.

Every python-tuf error is translated into one of this module's :class:`VerificationError`
subclasses (``raise ... from e``), so callers can tell a freeze from a rollback from a
tampered bundle without knowing python-tuf.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

log = logging.getLogger(__name__)

CUSTOM_KEY = "edgefleet"
_TARGET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


class VerificationError(Exception):
    """Base: the update was refused; nothing was installed."""


class MetadataError(VerificationError):
    """Signed metadata failed verification (the repository or the network is at fault)."""


class UntrustedMetadataError(MetadataError):
    """Metadata is unsigned or signed by keys the trusted root does not accept."""


class RollbackError(MetadataError):
    """Metadata is older than what the device already trusts (a rollback attack)."""


class FrozenMetadataError(MetadataError):
    """Metadata has expired (a freeze attack, or a server that stopped re-signing)."""


class TamperedDataError(MetadataError):
    """Downloaded bytes do not match the signed length or hashes."""


class AssignmentError(VerificationError):
    """The director's assignment cannot be accepted by this device."""


class NoAssignmentError(AssignmentError):
    """The director assigns nothing to this device."""


class WrongDeviceError(AssignmentError):
    """The assignment is bound to another device."""


class MixAndMatchError(AssignmentError):
    """The image repository does not list the assigned target with the same length/hashes."""


class DownloadFailedError(VerificationError):
    """Fetching metadata or the bundle failed (network, HTTP status)."""


class EndlessDataError(DownloadFailedError):
    """The server sent more bytes than the signed (or configured maximum) length."""


class SlowRetrievalError(DownloadFailedError):
    """The server stalled: no bytes within the fetcher's timeout."""


class LocalStorageError(VerificationError):
    """The device's metadata or download directory cannot be written."""


@dataclass(frozen=True)
class RepoUrls:
    """Where the two repositories are served (see docs/security-model.md)."""

    image_metadata_url: str
    image_targets_url: str
    director_metadata_url: str

    @classmethod
    def for_server(cls, api_url: str, device_id: str) -> RepoUrls:
        """The fleet server's URLs, ``api_url`` being e.g. ``http://host:port/api/v1``."""
        base = api_url.rstrip("/")
        return cls(f"{base}/repo/image/metadata/", f"{base}/repo/image/targets/",
                   f"{base}/repo/director/{device_id}/metadata/")


@dataclass(frozen=True)
class TrustConfig:
    """What a device is provisioned with: its id, both initial roots, a state directory."""

    device_id: str
    image_root: bytes      # the trusted image root.json (trust anchor, version 1 or later)
    director_root: bytes   # the trusted director root.json
    state_dir: Path        # ngclient keeps trusted metadata in state_dir/{image,director}


@dataclass(frozen=True)
class Assignment:
    """A target both repositories agree on and the director assigns to this device."""

    name: str
    length: int
    hashes: dict[str, str]
    image_target: TargetFile
    # the director's signed ``custom.edgefleet.shadow`` entry, unparsed (see shadow.py)
    shadow: object = None


@dataclass(frozen=True)
class VerifiedBundle:
    """A downloaded bundle whose bytes match the signed length and hashes."""

    path: Path
    assignment: Assignment


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn python-tuf errors raised while doing ``what`` into VerificationErrors."""
    try:
        yield
    except tuf_errors.ExpiredMetadataError as e:
        raise FrozenMetadataError(f"{what}: metadata expired ({e})") from e
    except tuf_errors.BadVersionNumberError as e:
        raise RollbackError(f"{what}: metadata version went backwards ({e})") from e
    except tuf_errors.UnsignedMetadataError as e:
        raise UntrustedMetadataError(f"{what}: bad or missing signatures ({e})") from e
    except tuf_errors.LengthOrHashMismatchError as e:
        raise TamperedDataError(f"{what}: length or hash mismatch ({e})") from e
    except tuf_errors.RepositoryError as e:
        raise MetadataError(f"{what}: {type(e).__name__}: {e}") from e
    except tuf_errors.DownloadLengthMismatchError as e:
        raise EndlessDataError(f"{what}: server sent too much data ({e})") from e
    except tuf_errors.SlowRetrievalError as e:
        raise SlowRetrievalError(f"{what}: server stalled") from e
    except tuf_errors.DownloadError as e:
        raise DownloadFailedError(f"{what}: {e}") from e
    except OSError as e:
        raise LocalStorageError(f"{what}: {e}") from e


class BundleVerifier:
    """The two ngclient Updaters of one device, for one update check.

    An Updater refreshes only once in its lifetime, so create a new BundleVerifier for each
    check. ``fetcher`` and ``updater_config`` are passed to both Updaters (fault injection,
    timeouts, size limits); ngclient builds its defaults when they are None.
    """

    def __init__(self, trust: TrustConfig, urls: RepoUrls, *,
                 fetcher: FetcherInterface | None = None,
                 updater_config: UpdaterConfig | None = None) -> None:
        self.trust = trust
        with _translated("loading the trusted roots"):
            self._director = self._updater(
                "director", trust.director_root, urls.director_metadata_url, None,
                fetcher=fetcher, config=updater_config)
            self._image = self._updater(
                "image", trust.image_root, urls.image_metadata_url, urls.image_targets_url,
                fetcher=fetcher, config=updater_config)

    def _updater(self, name: str, root: bytes, metadata_url: str, targets_url: str | None, *,
                 fetcher: FetcherInterface | None, config: UpdaterConfig | None) -> Updater:
        metadata_dir = self.trust.state_dir / name
        metadata_dir.mkdir(parents=True, exist_ok=True)
        return Updater(str(metadata_dir), metadata_url, target_base_url=targets_url,
                       fetcher=fetcher, config=config, bootstrap=root)

    def _director_assignment(self) -> TargetFile:
        with _translated("director repository"):
            try:
                self._director.refresh()
            except tuf_errors.DownloadHTTPError as e:
                if e.status_code != 404:
                    raise
                raise NoAssignmentError(
                    f"the director has no metadata for {self.trust.device_id}") from e
            # ngclient has no "list targets" call: read the names from the targets.json it
            # has just verified and persisted, then take each entry from the trusted set
            # through get_targetinfo (so nothing unverified is used).
            persisted = self.trust.state_dir / "director" / "targets.json"
            names = list(Metadata[Targets].from_bytes(persisted.read_bytes()).signed.targets)
            if not names:
                raise NoAssignmentError(
                    f"the director assigns nothing to {self.trust.device_id}")
            if len(names) != 1:
                raise AssignmentError(
                    f"the director lists {len(names)} targets; expected exactly one")
            assigned = self._director.get_targetinfo(names[0])
        if assigned is None:
            raise AssignmentError("the director's targets changed during the check")
        return assigned

    def check(self) -> Assignment:
        """Refresh both repositories and return the assignment both agree on.

        Raises:
            NoAssignmentError, WrongDeviceError, MixAndMatchError: the assignment is refused.
            MetadataError (and subclasses), DownloadFailedError (and subclasses): a
                repository's metadata failed to download or verify.
        """
        assigned = self._director_assignment()
        if not _TARGET_NAME_RE.fullmatch(assigned.path) or ".." in assigned.path:
            raise AssignmentError(f"the director assigns an invalid name {assigned.path!r}")
        custom = assigned.custom.get(CUSTOM_KEY) if isinstance(assigned.custom, dict) else None
        bound_to = custom.get("device_id") if isinstance(custom, dict) else None
        if bound_to != self.trust.device_id:
            raise WrongDeviceError(
                f"the assignment of {assigned.path} is for device {bound_to!r}, "
                f"not {self.trust.device_id!r}")
        with _translated("image repository"):
            self._image.refresh()
            listed = self._image.get_targetinfo(assigned.path)
        if listed is None:
            raise MixAndMatchError(
                f"the image repository does not list {assigned.path} (director assigns it)")
        if listed.length != assigned.length or listed.hashes != assigned.hashes:
            raise MixAndMatchError(
                f"director and image repository disagree on {assigned.path}: "
                f"length {assigned.length} vs {listed.length}, hashes differ: "
                f"{listed.hashes != assigned.hashes}")
        if "sha256" not in listed.hashes:
            raise MixAndMatchError(f"{assigned.path} has no sha256 in the signed metadata")
        return Assignment(assigned.path, listed.length, dict(listed.hashes), listed,
                          shadow=custom.get("shadow") if isinstance(custom, dict) else None)

    def image_target(self, name: str) -> Assignment:
        """The image repository's signed entry for target ``name``.

        For a shadow candidate: the (verified) director names it, the image repository
        vouches for its length and hashes; :meth:`download` then checks the bytes.

        Raises:
            AssignmentError: an invalid name.
            MixAndMatchError: the image repository does not list it, or without sha256.
            MetadataError (and subclasses), DownloadFailedError (and subclasses): the
                image repository's metadata failed to download or verify.
        """
        if not _TARGET_NAME_RE.fullmatch(name) or ".." in name:
            raise AssignmentError(f"invalid target name {name!r}")
        with _translated("image repository"):
            listed = self._image.get_targetinfo(name)  # refreshes the image repo once
        if listed is None:
            raise MixAndMatchError(f"the image repository does not list {name}")
        if "sha256" not in listed.hashes:
            raise MixAndMatchError(f"{name} has no sha256 in the signed metadata")
        return Assignment(name, listed.length, dict(listed.hashes), listed)

    def download(self, assignment: Assignment, dest_dir: Path) -> VerifiedBundle:
        """Download the assigned bundle into ``dest_dir``, verified before it appears there.

        Raises:
            EndlessDataError: the server sent more than the signed length.
            TamperedDataError: the bytes do not match the signed length and hashes.
            DownloadFailedError, SlowRetrievalError: network failures.
            LocalStorageError: ``dest_dir`` cannot be written.
        """
        final = dest_dir / assignment.name
        partial = dest_dir / f".partial-{assignment.name}"
        with _translated(f"downloading {assignment.name}"):
            dest_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._image.download_target(assignment.image_target, str(partial))
                with partial.open("rb") as f:
                    # ngclient verified a temp copy; check the bytes that are on disk now
                    assignment.image_target.verify_length_and_hashes(f)
                    os.fsync(f.fileno())
                partial.replace(final)
            finally:
                partial.unlink(missing_ok=True)
        log.info("verified %s (%d bytes)", assignment.name, assignment.length)
        return VerifiedBundle(final, assignment)


def verify_file(assignment: Assignment, path: Path) -> None:
    """Check a file fetched by other means (e.g. a resumed download) against the assignment.

    Raises:
        TamperedDataError: length or hashes differ.
        LocalStorageError: the file cannot be read.
    """
    with _translated(f"verifying {path.name}"), path.open("rb") as f:
        assignment.image_target.verify_length_and_hashes(f)


def verify_assignment(trust: TrustConfig, urls: RepoUrls, dest_dir: Path, *,
                      fetcher: FetcherInterface | None = None,
                      updater_config: UpdaterConfig | None = None) -> VerifiedBundle:
    """Refresh both repositories, check the assignment and download the verified bundle.

    Raises:
        VerificationError: a subclass says why the update was refused; nothing was
            written to ``dest_dir`` except, on success, the verified bundle.
    """
    verifier = BundleVerifier(trust, urls, fetcher=fetcher, updater_config=updater_config)
    return verifier.download(verifier.check(), dest_dir)
