"""ResumableFetcher: resume with Range, restart when Range is ignored, refuse endless data,
time out on a stalled server; and the same fetcher under BundleVerifier against the real
fleet server over HTTP.

The misbehaving servers are a small ``http.server`` whose faults each test chooses (they
stand in for a flaky network, a proxy that ignores Range, and an attacker).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tuf.api import exceptions

from edgefleet.agent.update.fetcher import ResumableFetcher
from edgefleet.agent.update.verify import BundleVerifier, TamperedDataError
from tests.fleet_server.updates.harness import repo_server, stalling_server

DATA = os.urandom(300_000)


@dataclass
class Faults:
    """What the test server does; ``requests`` records (path, Range header, bytes sent)."""

    data: bytes = DATA
    honour_range: bool = True
    cut_after: int | None = None      # first request only: close after this many bytes
    extra: bytes = b""                # appended to the body (endless data)
    stall_after: int | None = None    # send this many bytes, then go silent
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)


@contextmanager
def faulty_server(faults: Faults) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            data = faults.data
            start = 0
            range_header = self.headers.get("Range")
            if range_header and faults.honour_range:
                start = int(range_header.removeprefix("bytes=").rstrip("-"))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    faults.requests.append((self.path, range_header, 0))
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:] + faults.extra
            if not faults.extra:
                self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Connection", "close")
            self.end_headers()
            limit = len(body)
            if faults.cut_after is not None:
                limit, faults.cut_after = min(limit, faults.cut_after), None
            if faults.stall_after is not None:
                limit = min(limit, faults.stall_after)
            self.wfile.write(body[:limit])
            self.wfile.flush()
            faults.requests.append((self.path, range_header, limit))
            if faults.stall_after is not None:
                time.sleep(2.0)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fetch(fetcher: ResumableFetcher, url: str, max_length: int = len(DATA)) -> bytes:
    with fetcher.download_file(url, max_length) as f:
        return f.read()


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    faults = Faults(cut_after=len(DATA) * 6 // 10)
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    with faulty_server(faults) as base:
        url = f"{base}/targets/abc.bundle"
        with pytest.raises(exceptions.DownloadError):
            fetch(fetcher, url)
        partial = fetcher.partial_path(url)
        have = partial.stat().st_size
        assert 0 < have <= len(DATA) * 6 // 10
        assert partial.read_bytes() == DATA[:have]

        assert fetch(fetcher, url) == DATA
    assert faults.requests[1][1] == f"bytes={have}-"
    assert faults.requests[1][2] == len(DATA) - have  # only the rest was sent again
    assert not partial.exists()  # accepted: nothing left behind


def test_resume_survives_a_new_fetcher(tmp_path: Path) -> None:
    """A restarted agent (new fetcher, same directory) resumes the same partial file."""
    faults = Faults(cut_after=100_000)
    with faulty_server(faults) as base:
        url = f"{base}/targets/abc.bundle"
        with pytest.raises(exceptions.DownloadError):
            fetch(ResumableFetcher(tmp_path / "dl", socket_timeout_s=5), url)
        assert fetch(ResumableFetcher(tmp_path / "dl", socket_timeout_s=5), url) == DATA
    assert faults.requests[1][1] is not None


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path) -> None:
    faults = Faults(honour_range=False)
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    with faulty_server(faults) as base:
        url = f"{base}/targets/abc.bundle"
        partial = fetcher.partial_path(url)
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\x00" * 1000)  # bytes that are not the file's
        assert fetch(fetcher, url) == DATA
    assert faults.requests[0][1] == "bytes=1000-"
    assert faults.requests[0][2] == len(DATA)


def test_unsatisfiable_range_restarts_from_zero(tmp_path: Path) -> None:
    faults = Faults(data=DATA[:5000])
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    with faulty_server(faults) as base:
        url = f"{base}/targets/abc.bundle"
        partial = fetcher.partial_path(url)
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\x00" * 6000)  # longer than the server's file
        # the server answers 416, the fetcher starts over (and finds the file short)
        with pytest.raises(exceptions.DownloadError, match="5000 of 7000"):
            fetch(fetcher, url, max_length=7000)
        assert partial.read_bytes() == DATA[:5000]
    assert [r[1] for r in faults.requests] == ["bytes=6000-", None]


def test_endless_data_is_refused_and_never_written(tmp_path: Path) -> None:
    faults = Faults(extra=b"x" * 1_000_000)
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    with faulty_server(faults) as base:
        url = f"{base}/targets/abc.bundle"
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            fetch(fetcher, url)
        assert not fetcher.partial_path(url).exists()
        # the same for metadata (not resumable): capped by ngclient's own logic
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            fetch(fetcher, f"{base}/metadata/timestamp.json")
    assert list((tmp_path / "dl").iterdir()) == []


def test_endless_data_after_a_resume_is_refused(tmp_path: Path) -> None:
    faults = Faults(cut_after=50_000)
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    with faulty_server(faults) as base:
        url = f"{base}/targets/abc.bundle"
        with pytest.raises(exceptions.DownloadError):
            fetch(fetcher, url)
        faults.extra = b"y" * 10_000
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            fetch(fetcher, url)
        assert not fetcher.partial_path(url).exists()


def test_stalled_transfer_times_out_and_keeps_the_partial(tmp_path: Path) -> None:
    faults = Faults(stall_after=120_000)
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=0.5)
    with faulty_server(faults) as base:
        url = f"{base}/targets/abc.bundle"
        with pytest.raises(exceptions.SlowRetrievalError):
            fetch(fetcher, url)
        assert fetcher.partial_path(url).read_bytes() == DATA[:120_000]


def test_server_that_never_answers_times_out(tmp_path: Path) -> None:
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=0.5)
    with stalling_server() as base:
        with pytest.raises(exceptions.SlowRetrievalError):
            fetch(fetcher, f"{base}/targets/abc.bundle")
        with pytest.raises(exceptions.SlowRetrievalError):
            fetch(fetcher, f"{base}/metadata/timestamp.json")


def test_trickling_server_is_too_slow(tmp_path: Path) -> None:
    """Bytes keep coming, but below the minimum average rate: slow retrieval too."""
    faults = Faults(stall_after=10)
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5, min_rate_bytes_s=1e6,
                               rate_grace_s=0.0)
    with faulty_server(faults) as base, pytest.raises(exceptions.SlowRetrievalError):
        fetch(fetcher, f"{base}/targets/abc.bundle")


def test_refused_bytes_are_not_resumed(tmp_path: Path) -> None:
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    with faulty_server(Faults()) as base:
        url = f"{base}/targets/abc.bundle"
        with pytest.raises(exceptions.LengthOrHashMismatchError), \
                fetcher.download_file(url, len(DATA)):
            raise exceptions.LengthOrHashMismatchError("hash differs")
        assert not fetcher.partial_path(url).exists()


def test_only_one_partial_is_kept(tmp_path: Path) -> None:
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    stale = fetcher.partial_path("http://old/targets/x")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    with faulty_server(Faults()) as base:
        assert fetch(fetcher, f"{base}/targets/abc.bundle") == DATA
    assert not stale.exists()


def test_bundle_verifier_resumes_against_the_real_server(tmp_path: Path) -> None:
    """Through ngclient and the fleet server's Range support: a partial file holding wrong
    bytes is resumed (206, so the result is tampered and refused, proving the server sent
    only the rest), then deleted, and the next attempt downloads the bundle whole."""
    with repo_server(tmp_path / "server") as server:
        source = server.bundle("model-1.tar", size=200_000)
        server.repo.assign("dev-1", "model-1.tar")
        urls = server.urls("dev-1")

        def verifier() -> tuple[BundleVerifier, ResumableFetcher]:
            fetcher = ResumableFetcher(tmp_path / "partial", socket_timeout_s=5,
                                       resumable_prefixes=(urls.image_targets_url,))
            return BundleVerifier(server.trust("dev-1", tmp_path / "tuf"), urls,
                                  fetcher=fetcher), fetcher

        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        first, fetcher = verifier()
        assignment = first.check()
        partial = fetcher.partial_path(f"{urls.image_targets_url}{digest}.model-1.tar")
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"\x00" * 120_000)
        with pytest.raises(TamperedDataError):
            first.download(assignment, tmp_path / "out")
        assert fetcher.bytes_received < 120_000  # metadata + the last 80 000 bytes only
        assert not partial.exists()

        second, _ = verifier()
        bundle = second.download(second.check(), tmp_path / "out")
        assert bundle.path.read_bytes() == source.read_bytes()


class _KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: a 404 with a JSON body, then real metadata."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"error": {"code": "not_found"}}' if "missing" in self.path else b'{"ok": 1}'
        self.send_response(404 if "missing" in self.path else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def test_an_error_body_never_reaches_the_next_request(tmp_path: Path) -> None:
    """Regression: a 404's unread body stayed on the pooled keep-alive connection and the
    next request read it as its status line (seen as BadStatusLine in an end-to-end run)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    fetcher = ResumableFetcher(tmp_path / "dl", socket_timeout_s=5)
    try:
        for _ in range(3):
            with pytest.raises(exceptions.DownloadHTTPError):
                b"".join(fetcher.fetch(f"{base}/missing/2.root.json"))
            assert b"".join(fetcher.fetch(f"{base}/timestamp.json")) == b'{"ok": 1}'
    finally:
        server.shutdown()
        server.server_close()
