"""Alert webhook: POST JSON events to a configured URL from a background thread.

:meth:`WebhookSender.send` only puts the event on a bounded in-memory queue and returns
at once, so the evaluation loop never waits on the network; a full queue drops the event
(counted and logged). One worker thread delivers events in order: each attempt has a
timeout; connection errors, timeouts, 408, 429 and 5xx are retried with exponential
backoff (``backoff_s``, doubled per attempt) up to ``attempts``; other answers end the
delivery.

With a secret, every request carries ``X-Edgefleet-Signature: sha256=<hex>``, the
HMAC-SHA256 of the raw body with the secret. The secret is never logged, and neither
is any user:password part of the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Edgefleet-Signature"
EVENT_HEADER = "X-Edgefleet-Event"
DELIVERY_HEADER = "X-Edgefleet-Delivery"
_RETRY_STATUSES = frozenset({408, 429})
_IDLE_POLL_S = 0.5  # an idle worker notices close() this often


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, body: bytes, header: str) -> bool:
    """True when ``header`` is the signature of ``body`` (constant-time compare)."""
    return hmac.compare_digest(sign(secret, body), header)


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (for logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass
class WebhookStats:
    """Counters (read them for a snapshot; they only grow)."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0  # gave up after the last attempt or a non-retryable answer
    dropped: int = 0  # queue full or sender closed
    attempts: int = 0


@dataclass(frozen=True)
class _Event:
    name: str
    delivery: str
    body: bytes


class WebhookSender:
    """Delivers events to ``url`` on a worker thread (started on the first send)."""

    def __init__(
        self, url: str, secret: str = "", *, timeout_s: float = 5.0, attempts: int = 4,
        backoff_s: float = 1.0, queue_size: int = 1000,
    ) -> None:
        self._url = url
        self._secret = secret
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._queue: queue.Queue[_Event | None] = queue.Queue(queue_size)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = WebhookStats()

    @property
    def enabled(self) -> bool:
        return bool(self._url)

    def send(self, event: str, payload: dict[str, Any]) -> bool:
        """Queue ``payload`` for delivery; never blocks. False when dropped or disabled."""
        if not self._url:
            return False
        try:
            body = json.dumps({"event": event, **payload}, separators=(",", ":"),
                              sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError):
            log.exception("drift webhook event %s is not JSON; dropped", event)
            with self._lock:
                self.stats.dropped += 1
            return False
        with self._lock:
            if self._closed:
                self.stats.dropped += 1
                return False
            try:
                self._queue.put_nowait(_Event(event, uuid.uuid4().hex, body))
            except queue.Full:
                self.stats.dropped += 1
                log.warning("drift webhook queue full; event %s dropped", event)
                return False
            self.stats.queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="drift-webhook",
                                                daemon=True)
                self._thread.start()
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (pending events are dropped after the current one)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stopping.set()
        if thread is not None:
            # On a full queue the worker sees _stopping after its current event.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            thread.join(timeout_s)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued event was delivered or given up (for tests/shutdown)."""
        done = threading.Event()

        def check() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=check, daemon=True).start()
        return done.wait(timeout_s)

    # -- worker -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            try:
                if item is None:
                    return
                if self._stopping.is_set():
                    self.stats.dropped += 1
                    continue
                self._deliver(item)
            except Exception:  # the worker must survive anything
                log.exception("drift webhook worker error")
            finally:
                self._queue.task_done()

    def _deliver(self, event: _Event) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "edgefleet-drift",
                   EVENT_HEADER: event.name, DELIVERY_HEADER: event.delivery}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, event.body)
        for attempt in range(1, self._attempts + 1):
            self.stats.attempts += 1
            outcome = self._post(event, headers)
            if outcome == "ok":
                self.stats.delivered += 1
                return
            if outcome == "fatal" or attempt == self._attempts:
                break
            if self._stopping.wait(self._backoff_s * 2 ** (attempt - 1)):
                break
        self.stats.failed += 1
        log.warning("drift webhook %s to %s failed; giving up", event.name,
                    safe_url(self._url))

    def _post(self, event: _Event, headers: dict[str, str]) -> str:
        """One attempt: ``ok``, ``retry`` or ``fatal``."""
        request = urllib.request.Request(self._url, data=event.body, headers=headers,  # noqa: S310 - http(s) only, checked in settings
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:  # noqa: S310
                response.read()
                return "ok"
        except urllib.error.HTTPError as e:
            e.close()
            retry = e.code in _RETRY_STATUSES or e.code >= 500
            log.info("drift webhook %s answered %d", safe_url(self._url), e.code)
            return "retry" if retry else "fatal"
        except (OSError, ValueError) as e:  # URLError, timeouts, connection resets
            log.info("drift webhook %s: %s", safe_url(self._url), type(e).__name__)
            return "retry"
