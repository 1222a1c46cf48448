"""Signing keys of the two repositories: generate, store (0600 PEM files), load.

Every key is an Ed25519 key handled by ``securesystemslib.signer.CryptoSigner`` (the signer
python-tuf's Metadata API uses); nothing here implements cryptography itself. A key file is
named ``<repo>-<role>-<keyid prefix>.pem`` and holds the PKCS#8 private key; the public
keys live in the repositories' root metadata.

Offline keys (image root, image targets and director root) are written to a separate
directory when one is given, so the operator can move them off the server; the server then
signs with the online keys only (snapshot, timestamp and the director's roles) and asks for
the offline ones when they are needed (publishing a bundle, rotating a key).

Private key bytes are never logged and never part of an exception message.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from edgefleet.fleet_server.updates.errors import KeyMaterialError

log = logging.getLogger(__name__)


class RepoKind(Enum):
    """The two repositories of the Uptane-style design."""

    IMAGE = "image"
    DIRECTOR = "director"


class RoleName(Enum):
    """The four top-level TUF roles."""

    ROOT = "root"
    TARGETS = "targets"
    SNAPSHOT = "snapshot"
    TIMESTAMP = "timestamp"


KeySlot = tuple[RepoKind, RoleName]
OFFLINE_SLOTS: frozenset[KeySlot] = frozenset({
    (RepoKind.IMAGE, RoleName.ROOT), (RepoKind.IMAGE, RoleName.TARGETS),
    (RepoKind.DIRECTOR, RoleName.ROOT),
})
_KEY_FILE_RE = re.compile(
    r"^(image|director)-(root|targets|snapshot|timestamp)-([0-9a-f]{16})\.pem$")


@dataclass(frozen=True)
class KeyPolicy:
    """How many keys each role gets. Only the image root has more than one by default."""

    image_root_keys: int = 3
    image_root_threshold: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.image_root_threshold <= self.image_root_keys:
            raise ValueError("need 1 <= image_root_threshold <= image_root_keys")

    def keys_for(self, slot: KeySlot) -> tuple[int, int]:
        """(number of keys, threshold) for ``slot``."""
        if slot == (RepoKind.IMAGE, RoleName.ROOT):
            return self.image_root_keys, self.image_root_threshold
        return 1, 1


class Signers:
    """The private keys at hand, by repository, role and keyid."""

    def __init__(self) -> None:
        self._by_slot: dict[KeySlot, dict[str, CryptoSigner]] = {}

    def add(self, kind: RepoKind, role: RoleName, signer: CryptoSigner) -> None:
        self._by_slot.setdefault((kind, role), {})[signer.public_key.keyid] = signer

    def remove(self, kind: RepoKind, role: RoleName, keyid: str) -> None:
        self._by_slot.get((kind, role), {}).pop(keyid, None)

    def for_keyids(self, kind: RepoKind, role: RoleName,
                   keyids: Iterable[str]) -> list[CryptoSigner]:
        """The available signers among ``keyids`` for this role."""
        have = self._by_slot.get((kind, role), {})
        return [have[k] for k in keyids if k in have]

    def public_keys(self, kind: RepoKind, role: RoleName) -> list[SSlibKey]:
        return [s.public_key for s in self._by_slot.get((kind, role), {}).values()]

    def slots(self) -> list[KeySlot]:
        return [slot for slot, keys in self._by_slot.items() if keys]


def key_filename(kind: RepoKind, role: RoleName, keyid: str) -> str:
    """The file name of a key: ``<repo>-<role>-<first 16 hex of keyid>.pem``."""
    return f"{kind.value}-{role.value}-{keyid[:16]}.pem"


def _private_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def write_key(directory: Path, kind: RepoKind, role: RoleName, signer: CryptoSigner) -> Path:
    """Write ``signer``'s private key to a new 0600 file in ``directory`` (0700).

    Raises:
        KeyMaterialError: the file exists already or cannot be written.
    """
    path = _private_dir(directory) / key_filename(kind, role, signer.public_key.keyid)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise KeyMaterialError(f"cannot create key file {path}: {e.strerror}") from e
    with os.fdopen(fd, "wb") as f:
        f.write(signer.private_bytes)
        f.flush()
        os.fsync(f.fileno())
    log.info("wrote %s %s key %s", kind.value, role.value, signer.public_key.keyid[:16])
    return path


def generate_key(directory: Path, kind: RepoKind, role: RoleName) -> CryptoSigner:
    """A new Ed25519 signer for ``kind``/``role``, its private key stored in ``directory``.

    Raises:
        KeyMaterialError: the key file cannot be written.
    """
    signer = CryptoSigner.generate_ed25519()
    write_key(directory, kind, role, signer)
    return signer


def init_keys(online_dir: Path, offline_dir: Path | None = None,
              policy: KeyPolicy | None = None) -> Signers:
    """Create every key of both repositories; offline ones go to ``offline_dir`` if given.

    Raises:
        KeyMaterialError: a directory already holds keys, or a file cannot be written.
    """
    policy = policy or KeyPolicy()
    for directory in {online_dir, offline_dir or online_dir}:
        if directory.is_dir() and any(_KEY_FILE_RE.fullmatch(p.name)
                                      for p in directory.iterdir()):
            raise KeyMaterialError(f"{directory} already holds keys; refusing to overwrite")
    signers = Signers()
    for kind in RepoKind:
        for role in RoleName:
            slot = (kind, role)
            target_dir = offline_dir if (offline_dir and slot in OFFLINE_SLOTS) else online_dir
            for _ in range(policy.keys_for(slot)[0]):
                signers.add(kind, role, generate_key(target_dir, kind, role))
    return signers


def _load_key_file(path: Path) -> CryptoSigner:
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise KeyMaterialError(f"{path} is readable by group/others; chmod 600 it")
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
        return CryptoSigner(private)
    except (ValueError, TypeError) as e:
        # the message of these errors never contains key bytes
        raise KeyMaterialError(f"{path} is not a usable private key") from e


def load_signers(directories: Sequence[Path]) -> Signers:
    """Every key found in ``directories`` (missing directories are skipped: offline keys).

    Raises:
        KeyMaterialError: a key file is unreadable or has unsafe permissions.
    """
    signers = Signers()
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            match = _KEY_FILE_RE.fullmatch(path.name)
            if match is None:
                continue
            signers.add(RepoKind(match[1]), RoleName(match[2]), _load_key_file(path))
    return signers


def delete_key_files(directories: Sequence[Path], kind: RepoKind, role: RoleName,
                     keyids: Iterable[str]) -> list[Path]:
    """Remove the files of retired keys (after a rotation); returns the removed paths."""
    removed = []
    for keyid in keyids:
        name = key_filename(kind, role, keyid)
        for directory in directories:
            path = directory / name
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed
