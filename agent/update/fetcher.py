"""A ``tuf.ngclient`` fetcher that resumes interrupted bundle downloads.

ngclient asks a fetcher for a file with ``download_file(url, max_length)`` and then checks
the length and hashes of what it gets. ``ResumableFetcher`` keeps the bytes of a bundle
(any URL below one of ``resumable_prefixes``) in ``<download_dir>/<hash of url>.partial``
across attempts and process restarts; the next attempt asks for the rest with
``Range: bytes=<have>-``:

* ``206 Partial Content`` starting at ``<have>``: the bytes are appended;
* ``200 OK`` (a server or proxy that ignores ``Range``): the file starts over;
* ``416`` (the partial is longer than the server's file): the file starts over.

Whatever the server sends, no more than ``max_length`` bytes are ever written: one byte
more and the download fails with ``DownloadLengthMismatchError`` and the partial file is
deleted (endless data). A socket that stays silent for ``socket_timeout_s``, or a transfer
slower than ``min_rate_bytes_s`` on average after ``rate_grace_s``, fails with
``SlowRetrievalError`` (slow retrieval); the partial file is kept for the next attempt.
The partial file is deleted once ngclient has accepted its bytes, or when ngclient refuses
them (length or hash mismatch): a resume never builds on bytes that failed verification.
Bundle URLs on the fleet server carry the sha256 of their content
(``<sha256>.<name>``), so a partial file can only ever be resumed with the same bytes.

Metadata (every other URL) is fetched in one piece, capped at ``max_length`` as usual.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import urllib3
from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class ResumableFetcher(FetcherInterface):
    """Fetches TUF metadata and bundles over HTTP(S); bundle downloads resume.

    Args:
        download_dir: where ``.partial`` files are kept (created when needed). Only one
            partial file is kept at a time: starting a bundle download deletes the others.
        resumable_prefixes: URL prefixes of resumable files (the image repository's
            targets URL). Empty: every URL whose path does not end in ``.json``.
        socket_timeout_s: connect timeout and longest silence between received bytes.
        min_rate_bytes_s: slowest acceptable average rate of one response, checked once
            ``rate_grace_s`` have passed (0 disables the check).
        chunk_size: largest read from the socket, in bytes.
    """

    def __init__(
        self,
        download_dir: Path,
        *,
        resumable_prefixes: Sequence[str] = (),
        socket_timeout_s: float = 30.0,
        min_rate_bytes_s: float = 1024.0,
        rate_grace_s: float = 30.0,
        chunk_size: int = 256 * 1024,
        user_agent: str = "edgefleet-agent",
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        self.download_dir = Path(download_dir)
        self.resumable_prefixes = tuple(resumable_prefixes)
        self.socket_timeout_s = socket_timeout_s
        self.min_rate_bytes_s = min_rate_bytes_s
        self.rate_grace_s = rate_grace_s
        self.chunk_size = chunk_size
        self._pool = pool or urllib3.PoolManager(headers={"User-Agent": user_agent})
        self.bytes_received = 0  # body bytes received over the fetcher's lifetime

    # -- what is resumable ----------------------------------------------------------------
    def is_resumable(self, url: str) -> bool:
        if self.resumable_prefixes:
            return url.startswith(self.resumable_prefixes)
        return not (urllib3.util.parse_url(url).path or "").endswith(".json")

    def partial_path(self, url: str) -> Path:
        """The partial file of ``url`` (named by the URL's sha256, so any URL is safe)."""
        digest = hashlib.sha256(url.encode()).hexdigest()[:32]
        return self.download_dir / f"{digest}{PARTIAL_SUFFIX}"

    # -- FetcherInterface -----------------------------------------------------------------
    def _fetch(self, url: str) -> Iterator[bytes]:
        """A plain GET (metadata): raises DownloadHTTPError on an HTTP error status."""
        response = self._request(url, {})
        if response.status >= 400:
            _discard(response)
            raise exceptions.DownloadHTTPError(
                f"HTTP error {response.status} for {url}", response.status)
        return self._chunks(response, url)

    @contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Like ngclient's, but a bundle's bytes survive an interrupted attempt.

        Raises:
            DownloadLengthMismatchError: the server sent more than ``max_length`` bytes.
            SlowRetrievalError: the server stalled or trickled.
            DownloadHTTPError: an HTTP error status.
            DownloadError: the connection failed or closed early (the partial file is kept).
            OSError: the partial file cannot be written.
        """
        if not self.is_resumable(url):
            with super().download_file(url, max_length) as temp:
                yield temp
            return
        partial = self.partial_path(url)
        self._complete(url, partial, max_length)
        with partial.open("rb") as f:
            try:
                yield f
            except exceptions.RepositoryError:
                # ngclient refused the bytes (length or hashes): never resume from them.
                partial.unlink(missing_ok=True)
                raise
        partial.unlink(missing_ok=True)

    # -- the resumable download -----------------------------------------------------------
    def _complete(self, url: str, partial: Path, max_length: int) -> None:
        self.download_dir.mkdir(parents=True, exist_ok=True)
        for other in self.download_dir.glob(f"*{PARTIAL_SUFFIX}"):
            if other != partial:
                other.unlink(missing_ok=True)
        have = partial.stat().st_size if partial.exists() else 0
        if have > max_length:
            log.warning("partial download of %s is longer than allowed; starting over", url)
            partial.unlink()
            have = 0
        if have == max_length and have > 0:
            return  # complete: the caller checks length and hashes
        response = self._request(url, {"Range": f"bytes={have}-"} if have else {})
        if response.status == 416 and have:
            _discard(response)
            log.warning("server refused to resume %s at %d bytes; starting over", url, have)
            partial.unlink()
            have = 0
            response = self._request(url, {})
        if response.status >= 400:
            _discard(response)
            raise exceptions.DownloadHTTPError(
                f"HTTP error {response.status} for {url}", response.status)
        if response.status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != have:
                _discard(response)
                partial.unlink(missing_ok=True)
                raise exceptions.DownloadError(
                    f"{url}: asked for bytes from {have}, the server sent a range from {start}")
            mode = "ab"
        else:
            if have:
                log.info("server ignored Range for %s; downloading it from the start", url)
            have = 0
            mode = "wb"
        if have:
            log.info("resuming %s at %d of %d bytes", url, have, max_length)
        chunks = self._chunks(response, url)
        with partial.open(mode) as out:
            try:
                for chunk in chunks:
                    if have + len(chunk) > max_length:
                        raise exceptions.DownloadLengthMismatchError(
                            f"{url}: the server sent more than the {max_length} bytes allowed")
                    out.write(chunk)
                    have += len(chunk)
            except exceptions.DownloadLengthMismatchError:
                out.close()
                partial.unlink(missing_ok=True)
                raise
            finally:
                chunks.close()  # releases the connection now, even when stopping early
                if not out.closed:
                    out.flush()
                    os.fsync(out.fileno())
        if have < max_length:
            raise exceptions.DownloadError(
                f"{url}: the connection ended after {have} of {max_length} bytes "
                "(kept for resuming)")

    # -- HTTP -----------------------------------------------------------------------------
    def _request(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            return self._pool.request(
                "GET", url, headers=headers, preload_content=False, redirect=False,
                retries=False, timeout=urllib3.Timeout(connect=self.socket_timeout_s,
                                                       read=self.socket_timeout_s))
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(f"{url}: no answer") from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: {e}") from e

    def _chunks(self, response: urllib3.BaseHTTPResponse,
                url: str) -> Generator[bytes, None, None]:
        started = time.monotonic()
        received = 0
        finished = False
        try:
            while True:
                chunk = response.read1(self.chunk_size)
                if not chunk:
                    finished = True
                    return
                received += len(chunk)
                self.bytes_received += len(chunk)
                elapsed = time.monotonic() - started
                if (self.min_rate_bytes_s and elapsed > self.rate_grace_s
                        and received / elapsed < self.min_rate_bytes_s):
                    raise exceptions.SlowRetrievalError(
                        f"{url}: {received / elapsed:.0f} B/s is below the minimum "
                        f"{self.min_rate_bytes_s:.0f} B/s")
                yield chunk
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(f"{url}: the server stalled") from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: {e}") from e
        finally:
            if not finished:
                response.close()  # unread bytes left: the connection cannot be reused
            response.release_conn()


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """Give up a response without reading its body.

    The connection is closed, not returned to the pool: a pooled connection with an
    unread body (a 404's JSON error, say) would hand those bytes to the next request as
    its status line.
    """
    response.close()
    response.release_conn()


def _range_start(content_range: str) -> int | None:
    match = _CONTENT_RANGE_RE.fullmatch(content_range.strip())
    return None if match is None else int(match[1])
