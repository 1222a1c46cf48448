"""The alert webhook: a real local HTTP server receives signed alert events; a failing
or hanging webhook never blocks the evaluation."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgefleet.agent.drift import ReferenceProfile
from edgefleet.fleet_server.fleetdrift import FleetDriftSettings, install
from edgefleet.fleet_server.fleetdrift.webhook import (
    SIGNATURE_HEADER,
    WebhookSender,
    safe_url,
    sign,
    verify,
)
from tests.fleet_server.fleetdrift.support import DriftEnv, open_env

SECRET = "whsec-9f8e7d6c5b4a"


@dataclass
class Receiver:
    """A real HTTP server on a free local port that records POSTs."""

    status: int = 200
    hold: threading.Event | None = None  # when set, handlers wait for it before answering
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/drift"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                receiver.arrived.set()
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def _settings(url: str, attempts: int = 4) -> FleetDriftSettings:
    return FleetDriftSettings(webhook_url=url, webhook_secret=SECRET, webhook_timeout_s=5.0,
                              webhook_backoff_s=0.01, webhook_attempts=attempts)


def _drifted(env: DriftEnv) -> str:
    device = env.enroll()
    env.store_window(device, env.summary(seed=7, shift=1.0))
    return device


def test_webhook_receives_signed_alert(env: DriftEnv, receiver: Receiver,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    install(env.services, _settings(receiver.url))
    device = _drifted(env)
    assert env.drift.evaluate().opened == 2  # device + fleet
    assert env.drift.webhook.wait_idle(30)
    assert env.drift.webhook.stats.delivered == 2
    events = []
    for headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
        assert headers["Content-Type"] == "application/json"
        events.append(json.loads(body))
    assert {e["event"] for e in events} == {"drift.alert.opened"}
    device_event = next(e for e in events if e["alert"]["scope"] == "device")
    assert device_event["alert"]["scope_id"] == device
    assert "f0" in device_event["alert"]["drifted"]
    stored = env.drift.alerts.get(device_event["alert"]["id"])
    assert stored["status"] == "open"
    assert SECRET not in caplog.text


def test_hanging_webhook_does_not_block_evaluation(env: DriftEnv, receiver: Receiver) -> None:
    receiver.hold = threading.Event()
    install(env.services, _settings(receiver.url))
    _drifted(env)
    stats = env.drift.evaluate()  # returns while the webhook server holds the request
    assert stats.opened == 2
    assert env.drift.alerts.list(status=None)[1] == 2
    assert receiver.arrived.wait(30)
    assert env.drift.webhook.stats.delivered == 0
    receiver.hold.set()
    assert env.drift.webhook.wait_idle(30)
    assert env.drift.webhook.stats.delivered == 2


def test_failing_webhook_is_retried_then_given_up(env: DriftEnv, receiver: Receiver) -> None:
    receiver.status = 503
    install(env.services, _settings(receiver.url, attempts=3))
    _drifted(env)
    assert env.drift.evaluate().opened == 2
    assert env.drift.webhook.wait_idle(30)
    stats = env.drift.webhook.stats
    assert (stats.delivered, stats.failed, stats.attempts) == (0, 2, 6)
    assert len(receiver.requests) == 6
    # Evaluation goes on: the next windows are evaluated and alerts stay queryable.
    env.store_window(env.enroll(), env.summary(seed=8))
    assert env.drift.evaluate().windows == 1


def test_unreachable_webhook_is_counted(env: DriftEnv) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    install(env.services, _settings(f"http://127.0.0.1:{port}/x", attempts=2))
    _drifted(env)
    assert env.drift.evaluate().opened == 2
    assert env.drift.webhook.wait_idle(30)
    assert env.drift.webhook.stats.failed == 2


def test_client_errors_are_not_retried(receiver: Receiver) -> None:
    receiver.status = 400
    sender = WebhookSender(receiver.url, attempts=5, backoff_s=0.01)
    try:
        assert sender.send("drift.alert.opened", {"alert": {"id": 1}})
        assert sender.wait_idle(30)
        assert (sender.stats.failed, sender.stats.attempts) == (1, 1)
        headers, _ = receiver.requests[0]
        assert SIGNATURE_HEADER not in headers  # no secret: unsigned
    finally:
        sender.close()


def test_full_queue_drops_and_disabled_sender_sends_nothing(receiver: Receiver) -> None:
    receiver.hold = threading.Event()
    sender = WebhookSender(receiver.url, queue_size=1, backoff_s=0.01)
    try:
        assert sender.send("e", {"n": 1})
        assert receiver.arrived.wait(30)  # the worker holds event 1; the queue is empty
        assert sender.send("e", {"n": 2})
        assert not sender.send("e", {"n": 3})
        assert sender.stats.dropped == 1
    finally:
        receiver.hold.set()
        sender.close()
    assert not WebhookSender("").send("e", {})
    unusable = WebhookSender(receiver.url)
    assert not unusable.send("e", {"x": float("nan")})
    assert unusable.stats.dropped == 1 and unusable.stats.queued == 0


def test_sign_and_verify() -> None:
    body = b'{"event":"drift.alert.opened"}'
    header = sign("k", body)
    assert header == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert verify("k", body, header) and not verify("other", body, header)
    assert safe_url("https://user:pw@hooks.example:8443/p?token=x") == \
        "https://hooks.example:8443/p"


def test_settings_secret_not_in_repr() -> None:
    assert SECRET not in repr(_settings("https://hooks.example/drift"))
    with pytest.raises(ValueError, match="http"):
        FleetDriftSettings(webhook_url="ftp://x")


def test_webhook_delivery_after_restart_uses_persisted_alerts(
        env: DriftEnv, receiver: Receiver, tmp_path: Path,
        reference: ReferenceProfile) -> None:
    """Events are sent only after commit: a new app on the same data sends none twice."""
    install(env.services, _settings(receiver.url))
    _drifted(env)
    env.drift.evaluate()
    assert env.drift.webhook.wait_idle(30)
    sent = len(receiver.requests)
    data_dir, token = env.data_dir, env.viewer_token
    env.close()
    again = open_env(data_dir, _settings(receiver.url), fresh=False, reference=reference,
                     viewer_token=token)
    try:
        assert again.drift.evaluate().windows == 0
        assert again.drift.webhook.stats.queued == 0 and len(receiver.requests) == sent
    finally:
        again.close()
