"""HttpReporter and request signing, against a small local HTTP server that checks each
request's Ed25519 signature the way the fleet server does (``signing.verify_request``).

The fleet server's ``POST /api/v1/device/events`` is written concurrently; this handler
stands in for it with the same protocol (signed headers, ``{"events": [...]}``, 202).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.update.reporter import HttpReporter, ReporterConfig, wire_event
from edgefleet.agent.update.signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    BadSignatureError,
    sign_request,
    verify_request,
)

DEVICE = "dev-7"
KEY = Ed25519PrivateKey.generate()
WIRE_KEYS = {"ts", "kind", "state", "from", "to", "bundle", "error"}


@dataclass
class EventsServer:
    """Accepts signed event batches; ``statuses`` are answered first (then 202)."""

    statuses: list[int] = field(default_factory=list)
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)
    url: str = ""


@contextmanager
def events_server(state: EventsServer) -> Iterator[EventsServer]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/api/v1/device/events":
                self._answer(404)
                return
            try:
                device = verify_request(KEY.public_key(), self.headers, "POST", self.path, body)
            except BadSignatureError as e:
                state.refused.append(str(e))
                self._answer(401)
                return
            nonce = self.headers[NONCE_HEADER]
            if device != DEVICE or nonce in state.nonces:
                state.refused.append(f"device {device} / replayed nonce")
                self._answer(401)
                return
            state.nonces.add(nonce)
            if state.statuses:
                self._answer(state.statuses.pop(0))
                return
            state.batches.append(json.loads(body)["events"])
            self._answer(202)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/api/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def machine_event(i: int, **extra: Any) -> dict[str, Any]:
    return {"type": "update_state", "seq": i, "event": "check", "from": "idle",
            "to": "checking", "state": "checking", "bundle": f"b{i}.tar",
            "bundle_key": f"b{i}.tar@sha256:00", "error": None, **extra}


def reporter(url: str, path: Path, **config: Any) -> HttpReporter:
    return HttpReporter(url, DEVICE, KEY, path / "events.jsonl",
                        ReporterConfig(**{"timeout_s": 2.0, **config}))


def test_batches_are_signed_and_delivered(tmp_path: Path) -> None:
    with events_server(EventsServer()) as server:
        r = reporter(server.url, tmp_path, batch_size=2)
        for i in range(5):
            r.report(machine_event(i))
        assert r.flush(10)
    assert [len(b) for b in server.batches] == [2, 2, 1]
    sent = [e for batch in server.batches for e in batch]
    assert [e["bundle"] for e in sent] == [f"b{i}.tar" for i in range(5)]
    assert all(set(e) == WIRE_KEYS and e["kind"] == "state" for e in sent)
    assert server.refused == []
    assert r.pending() == 0 and (tmp_path / "events.jsonl").read_text() == ""


def test_queue_survives_a_restart(tmp_path: Path) -> None:
    first = reporter("http://127.0.0.1:9/api/v1", tmp_path)  # nothing listens there
    for i in range(3):
        first.report(machine_event(i))
    assert not first.flush(0.3)
    assert first.pending() == 3

    with events_server(EventsServer()) as server:
        second = reporter(server.url, tmp_path)  # a restarted agent, same file
        assert second.pending() == 3
        assert second.flush(10)
    assert [e["bundle"] for e in server.batches[0]] == ["b0.tar", "b1.tar", "b2.tar"]


def test_sender_thread_retries_with_backoff(tmp_path: Path) -> None:
    with events_server(EventsServer(statuses=[503, 500, 404])) as server:
        r = reporter(server.url, tmp_path, backoff_initial_s=0.05, backoff_max_s=0.2)
        r.start()
        try:
            r.report(machine_event(1))
            r.report(machine_event(2, event="failed", error="WarmupError: NaN"))
            deadline = time.monotonic() + 10
            while r.pending() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            r.stop()
    assert r.pending() == 0
    delivered = [e for batch in server.batches for e in batch]
    assert [e["bundle"] for e in delivered] == ["b1.tar", "b2.tar"]  # once each
    assert delivered[1]["error"] == "WarmupError: NaN"
    assert server.statuses == []  # the three failures really happened


def test_batch_the_server_will_never_accept_is_dropped(tmp_path: Path) -> None:
    with events_server(EventsServer(statuses=[400])) as server:
        r = reporter(server.url, tmp_path)
        r.report(machine_event(1))
        assert r.send_batch() == 1
        r.report(machine_event(2))
        assert r.flush(5)
    assert r.dropped == 1
    assert [e["bundle"] for b in server.batches for e in b] == ["b2.tar"]


def test_queue_is_bounded_oldest_dropped(tmp_path: Path) -> None:
    r = reporter("http://127.0.0.1:9/api/v1", tmp_path, max_queued=3)
    for i in range(5):
        r.report(machine_event(i))
    assert [e["bundle"] for e in r.events()] == ["b2.tar", "b3.tar", "b4.tar"]
    assert r.dropped == 2
    again = reporter("http://127.0.0.1:9/api/v1", tmp_path, max_queued=3)
    assert [e["bundle"] for e in again.events()] == ["b2.tar", "b3.tar", "b4.tar"]


def test_a_line_cut_by_a_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = json.dumps(wire_event(machine_event(1), 1.0))
    path.write_text(good + "\n" + good[:20])  # the crash cut the second line
    r = reporter("http://127.0.0.1:9/api/v1", tmp_path)
    assert r.pending() == 1
    r.report(machine_event(2))
    again = reporter("http://127.0.0.1:9/api/v1", tmp_path)
    assert [e["bundle"] for e in again.events()] == ["b1.tar", "b2.tar"]


def test_wire_form_of_each_machine_event() -> None:
    assert wire_event(machine_event(3, event="failed", error="boom"), 12.5) == {
        "ts": 12.5, "kind": "state", "state": "checking", "from": "idle", "to": "checking",
        "bundle": "b3.tar", "error": "boom"}
    resumed = wire_event({"type": "update_resumed", "state": "downloading", "bundle": "x"}, 1)
    assert resumed["kind"] == "state"
    assert (resumed["from"], resumed["to"]) == ("downloading", "downloading")
    error = wire_event({"type": "update_error", "state": "rolling_back", "error": "disk",
                        "bundle": None}, 1)
    assert error["kind"] == "error" and error["error"] == "disk"
    long = wire_event({"type": "update_error", "state": "warming", "error": "x" * 10_000,
                       "bundle": ""}, 1)
    assert len(long["error"]) == 4096 and long["bundle"] is None


def test_signature_covers_method_path_time_nonce_and_body() -> None:
    body = b'{"events": []}'
    now = 1_700_000_000
    headers = sign_request(KEY, DEVICE, "post", "http://h:1/api/v1/device/events?x=1", body,
                           timestamp=now)
    assert len(headers[NONCE_HEADER]) == 32 and headers[TIMESTAMP_HEADER] == str(now)
    public = KEY.public_key()
    assert verify_request(public, headers, "POST", "/api/v1/device/events", body,
                          now=now) == DEVICE
    for method, path, data, at in (("PUT", "/api/v1/device/events", body, now),
                                   ("POST", "/device/events", body, now),
                                   ("POST", "/api/v1/device/events", body + b" ", now),
                                   ("POST", "/api/v1/device/events", body, now + 301)):
        with pytest.raises(BadSignatureError):
            verify_request(public, headers, method, path, data, now=at)
    forged = {**headers, SIGNATURE_HEADER: sign_request(
        Ed25519PrivateKey.generate(), DEVICE, "POST", "/api/v1/device/events", body,
        timestamp=now, nonce=headers[NONCE_HEADER])[SIGNATURE_HEADER]}
    with pytest.raises(BadSignatureError, match="does not verify"):
        verify_request(public, forged, "POST", "/api/v1/device/events", body, now=now)
    missing = {k: v for k, v in headers.items() if k != NONCE_HEADER}
    with pytest.raises(BadSignatureError, match="missing header"):
        verify_request(public, missing, "POST", "/api/v1/device/events", body, now=now)
