"""Deliver the updater's events to the fleet server over HTTP, without ever blocking it.

``HttpReporter.report(event)`` (the machine's ``Reporter``) turns the machine's event into
the wire form, appends it to a bounded queue kept in memory *and* in a JSON-lines file,
and returns: no network I/O happens on the updater's thread. A sender thread (``start``)
or an explicit ``flush`` posts the queue in batches::

    POST /api/v1/device/events          (signed: see ``signing``)
    {"events": [{"ts", "kind", "state", "from", "to", "bundle", "error"}, ...]}

and drops a batch from the queue only once the server answered ``202`` (any 2xx). Network
errors, ``5xx``, ``401``/``403``/``404``/``408``/``429`` keep the batch and retry with
exponential backoff (capped, with jitter); any other ``4xx`` means the server will never
accept that batch, so it is dropped with an error log rather than blocking the queue
forever. Events survive a restart: the file is read back on start. When the queue is
full, the oldest events are dropped (the latest state matters most).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.update.signing import sign_request
from edgefleet.agent.update.state import atomic_write_bytes

log = logging.getLogger(__name__)

EVENTS_PATH = "/device/events"
MAX_ERROR_CHARS = 4096   # the server refuses longer messages (and with them the batch)
MAX_BUNDLE_CHARS = 200
_RETRY_STATUSES = frozenset({401, 403, 404, 408, 429})


class EventKind(StrEnum):
    STATE = "state"
    ERROR = "error"


class ReportError(Exception):
    """A batch of events could not be delivered (retried later)."""


@dataclass(frozen=True)
class ReporterConfig:
    """How the reporter queues and sends.

    Attributes:
        max_queued: events kept at most (memory and file); the oldest go first.
        batch_size: events per POST.
        timeout_s: HTTP timeout of one POST.
        backoff_initial_s, backoff_max_s: retry delay after a failure, doubled each time.
    """

    max_queued: int = 1000
    batch_size: int = 50
    timeout_s: float = 10.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0


def wire_event(event: Mapping[str, Any], ts: float) -> dict[str, Any]:
    """The server's form of one of ``UpdateMachine``'s events (pure).

    ``update_state`` becomes a ``state`` event (``error`` set when the transition is a
    failure); ``update_error`` (a failed rollback, an unusable active model) an ``error``
    event; ``update_resumed`` a ``state`` event whose ``from`` and ``to`` are the state the
    update resumed in.
    """
    kind = EventKind.ERROR if event.get("type") == "update_error" else EventKind.STATE
    state = str(event.get("state") or event.get("to") or "unknown")
    error = event.get("error")
    bundle = event.get("bundle")
    return {
        "ts": round(ts, 6),
        "kind": kind.value,
        "state": state,
        "from": event.get("from", state),
        "to": event.get("to", state),
        "bundle": str(bundle)[:MAX_BUNDLE_CHARS] if bundle else None,
        "error": None if error is None else str(error)[:MAX_ERROR_CHARS],
    }


@dataclass
class _Queued:
    qid: int
    event: dict[str, Any]


class HttpReporter:
    """The machine's ``Reporter``: a persisted, bounded queue posted by a sender thread.

    Args:
        api_url: the server's API base, e.g. ``http://fleet:8080/api/v1``.
        device_id, key: the device identity that signs each request.
        queue_path: the JSON-lines file that holds undelivered events.
    """

    def __init__(
        self,
        api_url: str,
        device_id: str,
        key: Ed25519PrivateKey,
        queue_path: Path,
        config: ReporterConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = api_url.rstrip("/") + EVENTS_PATH
        self.device_id = device_id
        self.config = config or ReporterConfig()
        self.queue_path = Path(queue_path)
        self._key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._send_lock = threading.Lock()  # one POST at a time (thread or flush)
        self._thread: threading.Thread | None = None
        self._next_qid = 0
        self._queue: deque[_Queued] = deque()
        self._failures = 0
        self.delivered = 0
        self.dropped = 0
        self._load()

    # -- the Reporter protocol ------------------------------------------------------------
    def report(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (persisted) and wake the sender. Never raises for I/O errors."""
        wire = wire_event(event, self._clock())
        with self._lock:
            self._queue.append(_Queued(self._next_qid, wire))
            self._next_qid += 1
            overflow = len(self._queue) > self.config.max_queued
            while len(self._queue) > self.config.max_queued:
                self._queue.popleft()
                self.dropped += 1
            try:
                if overflow:
                    self._rewrite_locked()
                else:
                    with self.queue_path.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(wire, separators=(",", ":")) + "\n")
            except OSError as e:  # the event stays queued in memory
                log.warning("cannot persist update event to %s: %s", self.queue_path, e)
        if overflow:
            log.warning("event queue full: dropped the oldest events (%d so far)", self.dropped)
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def events(self) -> list[dict[str, Any]]:
        """The queued (undelivered) events, oldest first."""
        with self._lock:
            return [dict(q.event) for q in self._queue]

    # -- sending --------------------------------------------------------------------------
    def send_batch(self) -> int:
        """POST the oldest batch once; return how many events left the queue.

        Raises:
            ReportError: the server is unreachable or answered with a retryable status.
        """
        with self._send_lock:
            with self._lock:
                batch = list(self._queue)[: self.config.batch_size]
            if not batch:
                return 0
            body = json.dumps({"events": [q.event for q in batch]},
                              separators=(",", ":")).encode()
            status = self._post(body)
            if status in _RETRY_STATUSES or status >= 500:
                raise ReportError(f"server answered {status} to {len(batch)} events")
            if not 200 <= status < 300:
                log.error("server refused %d update events with %d; dropping them",
                          len(batch), status)
                self.dropped += len(batch)
            else:
                self.delivered += len(batch)
            sent = {q.qid for q in batch}
            with self._lock:
                self._queue = deque(q for q in self._queue if q.qid not in sent)
                try:
                    self._rewrite_locked()
                except OSError as e:
                    log.warning("cannot rewrite %s: %s", self.queue_path, e)
            return len(batch)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send until the queue is empty or ``timeout_s`` passed; True when empty.

        Failures are logged, not raised (retried until the deadline, without backoff
        beyond a short pause).
        """
        deadline = time.monotonic() + timeout_s
        while self.pending():
            try:
                self.send_batch()
            except ReportError as e:
                log.info("event delivery failed: %s", e)
                if time.monotonic() + 0.2 > deadline:
                    return False
                time.sleep(0.2)
            if time.monotonic() > deadline:
                break
        return self.pending() == 0

    def start(self) -> None:
        """Start the sender thread (a daemon thread; ``stop`` ends it)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgefleet-events",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the sender thread; undelivered events stay in the file for next time."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.pending():
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self.send_batch()
                self._failures = 0
            except ReportError as e:
                self._failures += 1
                delay = self._backoff_s()
                log.info("event delivery failed (%s); retrying in %.1f s", e, delay)
                self._stop.wait(delay)
            except Exception:  # the sender must survive anything and keep the events
                self._failures += 1
                log.exception("unexpected error while sending update events")
                self._stop.wait(self._backoff_s())

    def _backoff_s(self) -> float:
        cfg = self.config
        base = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** min(self._failures - 1, 30))
        return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    def _post(self, body: bytes) -> int:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   **sign_request(self._key, self.device_id, "POST", self.url, body)}
        request = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310 - configured fleet server URL
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:  # noqa: S310 - configured fleet server URL
                response.read(1 << 16)
                return int(response.status)
        except urllib.error.HTTPError as e:
            e.close()
            return int(e.code)
        except (urllib.error.URLError, OSError) as e:
            raise ReportError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from e

    # -- persistence ----------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.queue_path.parent.mkdir(parents=True, exist_ok=True)
            text = self.queue_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("cannot read queued update events from %s: %s", self.queue_path, e)
            return
        lines = text.splitlines()
        clean = text.endswith("\n") or not text
        for line in lines[-self.config.max_queued:]:
            try:
                event = json.loads(line)
            except ValueError:
                clean = False  # a line cut short by a crash
                continue
            if isinstance(event, dict):
                self._queue.append(_Queued(self._next_qid, event))
                self._next_qid += 1
        if not clean or len(lines) > self.config.max_queued:
            try:  # so the next append starts on a line of its own
                self._rewrite_locked()
            except OSError as e:
                log.warning("cannot rewrite %s: %s", self.queue_path, e)
        if self._queue:
            log.info("%d undelivered update events loaded from %s", len(self._queue),
                     self.queue_path)

    def _rewrite_locked(self) -> None:
        data = "".join(json.dumps(q.event, separators=(",", ":")) + "\n" for q in self._queue)
        self.queue_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.queue_path, data.encode("utf-8"))
