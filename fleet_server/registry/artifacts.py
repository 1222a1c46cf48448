"""Content-addressed artifact storage: ``<data_dir>/artifacts/sha256/<hex digest>``.

An upload is streamed into a temporary file while it is hashed, inspected there, and
only then moved into place with an atomic rename. Identical bytes are stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgefleet.fleet_server.registry.errors import InvalidArtifactError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedArtifact:
    """Bytes written to a temporary file, hashed, not yet committed."""

    path: Path
    digest: str  # "sha256:<hex>"
    size_bytes: int


class ArtifactStore:
    """Stores model files by their sha256 digest under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dir = root / "sha256"

    def path_for(self, digest: str) -> Path:
        """Where the artifact with ``digest`` ("sha256:<hex>") lives (may not exist)."""
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or len(hexdigest) != 64 or not all(
            c in "0123456789abcdef" for c in hexdigest
        ):
            raise InvalidArtifactError(f"not a sha256 digest: {digest!r}")
        return self._dir / hexdigest

    def exists(self, digest: str) -> bool:
        """Whether the artifact is stored."""
        return self.path_for(digest).is_file()

    @contextlib.contextmanager
    def stage(self, stream: BinaryIO, *, max_bytes: int | None = None) -> Iterator[StagedArtifact]:
        """Write ``stream`` to a temporary file while hashing it; clean up on exit.

        Call :meth:`commit` inside the ``with`` block to keep the file.

        Raises:
            InvalidArtifactError: the stream is empty or larger than ``max_bytes``.
        """
        self._dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=self._dir)
        tmp = Path(tmp_name)
        try:
            sha = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise InvalidArtifactError(f"artifact larger than {max_bytes} bytes")
                    sha.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise InvalidArtifactError("artifact is empty")
            yield StagedArtifact(tmp, f"sha256:{sha.hexdigest()}", size)
        finally:
            tmp.unlink(missing_ok=True)

    def commit(self, staged: StagedArtifact) -> Path:
        """Move a staged artifact into its content address (idempotent)."""
        final = self.path_for(staged.digest)
        if final.exists():
            return final
        os.chmod(staged.path, 0o644)
        os.replace(staged.path, final)
        return final
