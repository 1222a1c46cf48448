"""``TelemetryClient``: the outbox plus one supervisor thread that owns the connection.

``publish`` only commits to the outbox and wakes the supervisor: it never waits for
the network. The supervisor thread loops: increment ``bd``, connect (a fresh
:class:`MqttConnection` whose last will is a retained ``status`` ``offline`` for this
``bd``), send ``birth`` and a retained ``status`` ``online``, subscribe to ``desired``
and ``cmd``, then drain the outbox at QoS 1 with at most ``max_inflight`` unacknowledged
messages, deleting rows only on PUBACK, and send a ``heartbeat`` every ``heartbeat_s``.
When the connection drops it waits a jittered exponential backoff and starts over;
unacknowledged rows are re-sent from the oldest, marked ``historical``.

Reconnect policy (our own loop, not paho's ``reconnect_delay_set``, because every
attempt needs a new will carrying the new ``bd``): the n-th consecutive failed attempt
waits ``min(backoff_max_s, backoff_initial_s * 2**n)`` times a uniform factor in
[0.5, 1) (so a fleet that lost its broker does not reconnect in lockstep); the count
resets after a connection that stayed up for ``backoff_reset_s``.

Birth, status and heartbeat are sent directly (not stored): their ``seq`` comes from
the same counter, so a receiver may see a gap when one of them was lost in a drop.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.agent.telemetry import inventory
from edgefleet.agent.telemetry.envelope import (
    Channel,
    Envelope,
    Status,
    decode,
    encode_body,
    encode_raw,
    topic,
    validate_device_id,
)
from edgefleet.agent.telemetry.errors import EnvelopeError, TelemetryError
from edgefleet.agent.telemetry.mqtt import (
    BrokerConfig,
    MqttConnection,
    NotConnectedError,
    Will,
    broker_from_enrollment,
)
from edgefleet.agent.telemetry.outbox import Outbox, OutboxConfig, OutboxStats

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
InboundHandler = Callable[[Envelope], None]
StatsProvider = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class TelemetryConfig:
    """Timing and windows of the client (all durations in seconds)."""

    heartbeat_s: float = 30.0
    max_inflight: int = 256  # unacknowledged QoS 1 publishes at once
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    backoff_reset_s: float = 10.0  # a connection up this long resets the backoff
    connect_timeout_s: float = 10.0
    inbound_queue_size: int = 1000  # desired/cmd messages waiting for the handler
    outbox: OutboxConfig = field(default_factory=OutboxConfig)


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds to wait before attempt ``attempt`` (0-based): capped doubling, jittered."""
    return min(max_s, initial_s * 2.0 ** min(attempt, 32)) * rng.uniform(0.5, 1.0)


@dataclass(frozen=True)
class ClientStats:
    """Counters of this process's client (the outbox's are persisted)."""

    connects: int
    sent: int
    acked: int
    inbound_rejected: int
    inbound_dropped: int
    connected: bool
    outbox: OutboxStats


class TelemetryClient:
    """Device-side telemetry: durable outbox, MQTT session, heartbeat, inbound queue.

    Raises:
        EnvelopeError: invalid ``device_id``.
        OutboxError: the outbox under ``state_dir`` cannot be opened.
    """

    def __init__(
        self,
        device_id: str,
        broker: BrokerConfig,
        state_dir: Path | str,
        config: TelemetryConfig | None = None,
        *,
        models: Mapping[str, str] | None = None,
        runtimes: Mapping[str, str] | None = None,
        stats: StatsProvider | None = None,
        on_inbound: InboundHandler | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.device_id = validate_device_id(device_id)
        self.broker = broker
        self.config = config or TelemetryConfig()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not security)
        self._models = dict(models or {})
        self._runtimes = None if runtimes is None else dict(runtimes)
        self._stats_provider = stats
        self._on_inbound = on_inbound
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(state / OUTBOX_FILE, self.config.outbox, clock=clock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inbound: queue.Queue[Envelope | None] = queue.Queue(self.config.inbound_queue_size)
        self._threads: list[threading.Thread] = []
        self._conn: MqttConnection | None = None
        self._cpu = inventory.CpuMeter()
        self._started_at = time.monotonic()
        self._connects = self._sent = self._acked = 0
        self._inbound_rejected = self._inbound_dropped = 0

    @classmethod
    def from_enrollment(cls, state_dir: Path | str, **kwargs: Any) -> TelemetryClient:
        """A client for the device enrolled in ``state_dir`` (its broker credentials).

        Raises:
            BrokerConfigError: not enrolled or no broker in the enrollment.
        """
        device_id, broker = broker_from_enrollment(Path(state_dir))
        return cls(device_id, broker, state_dir, **kwargs)

    # -- public API ------------------------------------------------------------------

    def publish(self, channel: Channel, body: Mapping[str, Any]) -> int:
        """Commit ``body`` to the outbox for ``channel``; return its ``seq``.

        Thread-safe, O(1) and never waits for the network.

        Raises:
            EnvelopeError: a server channel, or a body that is not JSON or too large.
            OutboxError: the outbox write failed.
        """
        seq = self.outbox.put(channel, body)
        self._wake.set()
        return seq

    def set_models(self, models: Mapping[str, str]) -> None:
        """``{model: version}`` reported in the ``birth`` of the next connect."""
        self._models = dict(models)

    def start(self) -> None:
        """Start the supervisor and inbound-dispatch threads (once).

        Raises:
            TelemetryError: already started.
        """
        if self._threads:
            raise TelemetryError("client already started")
        self._threads = [
            threading.Thread(target=self._run, name="edgefleet-telemetry", daemon=True),
            threading.Thread(target=self._dispatch, name="edgefleet-telemetry-inbound",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Publish ``offline`` if connected, disconnect, stop threads, close the outbox.

        Unsent messages stay in the outbox for the next start.
        """
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(queue.Full):  # a full queue: the dispatcher sees _stop
            self._inbound.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout_s)
        self.outbox.close()

    def __enter__(self) -> TelemetryClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """True while a session is up."""
        conn = self._conn
        return conn is not None and conn.connected

    @property
    def connection(self) -> MqttConnection | None:
        """The current connection (for diagnostics and fault-injection tests)."""
        return self._conn

    def stats(self) -> ClientStats:
        """Counters for this process plus the outbox's."""
        return ClientStats(self._connects, self._sent, self._acked, self._inbound_rejected,
                           self._inbound_dropped, self.connected, self.outbox.stats())

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.outbox.stats().depth > 0:
            if time.monotonic() > deadline or self._stop.is_set():
                return False
            time.sleep(0.01)
        return True

    # -- supervisor thread -----------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                up = self._session()
            except (TelemetryError, OSError):
                log.exception("telemetry session failed")
                up = False
            except Exception:  # the supervisor must outlive any bug in one session
                log.exception("unexpected error in telemetry session")
                up = False
            if self._stop.is_set():
                break
            if up and time.monotonic() - started >= self.config.backoff_reset_s:
                attempt = 0
            delay = backoff_delay(attempt, self.config.backoff_initial_s,
                                  self.config.backoff_max_s, self._rng)
            attempt += 1
            log.info("reconnecting in %.2fs (attempt %d)", delay, attempt)
            self._stop.wait(delay)

    def _session(self) -> bool:
        """One connection from connect to loss; True if it got connected."""
        bd = self.outbox.begin_connection()
        status_topic = topic(self.device_id, Channel.STATUS)
        offline = Will(status_topic, self._direct_payload(Channel.STATUS, bd, _status(False)))
        acks = _Acks(self._wake)
        conn = MqttConnection(self.broker, self.device_id, offline, on_ack=acks.add,
                              on_message=self._on_message, on_down=self._wake.set,
                              max_inflight=self.config.max_inflight)
        if not conn.open(self.config.connect_timeout_s):
            return False
        self._connects += 1
        self._conn = conn
        log.info("connected to %s:%s as %s (bd=%d)", self.broker.host, self.broker.port,
                 self.device_id, bd)
        try:
            conn.subscribe([topic(self.device_id, Channel.DESIRED),
                            topic(self.device_id, Channel.CMD)])
            birth = inventory.birth_body(self._models, self._runtimes)
            conn.publish(topic(self.device_id, Channel.BIRTH),
                         self._direct_payload(Channel.BIRTH, bd, birth))
            conn.publish(status_topic, self._direct_payload(Channel.STATUS, bd, _status(True)),
                         retain=True)
            self._pump(conn, bd, acks)
        except NotConnectedError as e:
            log.info("connection lost: %s", e)
        finally:
            self._conn = None
            conn.close(final=offline if self._stop.is_set() else None)
        return True

    def _pump(self, conn: MqttConnection, bd: int, acks: _Acks) -> None:
        """Drain the outbox over ``conn`` until it drops or the client stops.

        Rows are deleted only after their PUBACK, in batches (one SQLite commit per
        quarter window of acknowledgements, when idle, and when the connection ends): a
        crash between a PUBACK and that commit only causes a duplicate, which the
        receiver drops by (bd, seq). The window is refilled when a quarter of it is
        free, so reads are batched too.
        """
        window = self.config.max_inflight
        refill = max(1, window // 4)
        inflight: dict[int, int] = {}  # mid -> seq
        delivered: list[int] = []  # PUBACKed seqs not yet deleted from the outbox
        cursor = 0  # highest seq sent on this connection
        topics = {c: topic(self.device_id, c) for c in Channel}
        next_heartbeat = time.monotonic()
        try:
            while not self._stop.is_set() and conn.connected:
                self._wake.clear()
                for mid in acks.drain():
                    seq = inflight.pop(mid, None)
                    if seq is not None:
                        delivered.append(seq)
                room = window - len(inflight)
                sent = 0
                if room >= refill or not inflight:
                    for rec in self.outbox.peek(room, cursor):
                        payload = encode_raw(rec.channel, self.device_id, bd=rec.bd,
                                             seq=rec.seq, ts=rec.ts, historical=rec.bd < bd,
                                             body_json=rec.body_json)
                        inflight[conn.publish(topics[rec.channel], payload)] = rec.seq
                        cursor = rec.seq
                        sent += 1
                    self._sent += sent
                if len(delivered) >= refill or (delivered and not inflight and sent == 0):
                    self._ack(delivered)
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._heartbeat(conn, bd)
                    next_heartbeat = now + self.config.heartbeat_s
                if sent < room or sent == 0:
                    acks.wake_at = max(1, min(refill, len(inflight)))
                    timeout = min(0.25, max(0.0, next_heartbeat - time.monotonic()))
                    if not self._wake.wait(timeout) and delivered:
                        self._ack(delivered)  # quiet for a while: persist what is done
        finally:
            for mid in acks.drain():  # PUBACKs that came before the end still count
                seq = inflight.pop(mid, None)
                if seq is not None:
                    delivered.append(seq)
            if delivered:
                self._ack(delivered)

    def _ack(self, delivered: list[int]) -> None:
        self.outbox.ack(*delivered)
        self._acked += len(delivered)
        delivered.clear()

    def _heartbeat(self, conn: MqttConnection, bd: int) -> None:
        out = self.outbox.stats()
        body: dict[str, Any] = {
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "rss_bytes": inventory.rss_bytes(),
            "cpu_percent": self._cpu.sample(),
            "outbox": {"depth": out.depth, "bytes": out.bytes, "dropped": out.dropped},
            "inbound": {"rejected": self._inbound_rejected, "dropped": self._inbound_dropped},
        }
        if self._stats_provider is not None:
            try:
                body.update(self._stats_provider())
            except Exception:  # a caller bug must not stop telemetry
                log.exception("heartbeat stats provider failed")
        try:
            payload = self._direct_payload(Channel.HEARTBEAT, bd, body)
        except EnvelopeError as e:
            log.error("heartbeat not sent: %s", e)
            return
        conn.publish(topic(self.device_id, Channel.HEARTBEAT), payload)

    def _direct_payload(self, channel: Channel, bd: int, body: Mapping[str, Any]) -> bytes:
        body_json = encode_body(body, self.config.outbox.max_payload_bytes)
        return encode_raw(channel, self.device_id, bd=bd, seq=self.outbox.reserve_seq(),
                          ts=float(self._clock()), historical=False, body_json=body_json)

    # -- inbound (desired, cmd) ------------------------------------------------------

    def _on_message(self, name: str, payload: bytes) -> None:
        """paho thread: validate and enqueue; never raises, never blocks."""
        if not payload:  # an empty retained message clears ``desired``: nothing to do
            return
        try:
            env = decode(payload, self.config.outbox.max_payload_bytes,
                         expected_device=self.device_id)
            if topic(self.device_id, env.type) != name or env.type.from_device:
                raise EnvelopeError(f"envelope type {env.type.value!r} on {name!r}")
        except EnvelopeError as e:
            self._inbound_rejected += 1
            log.warning("rejected inbound message on %s: %s", name, e)
            return
        try:
            self._inbound.put_nowait(env)
        except queue.Full:
            self._inbound_dropped += 1
            log.warning("inbound queue full: dropped %s seq %d", env.type.value, env.seq)

    def _dispatch(self) -> None:
        while True:
            env = self._inbound.get()
            if env is None or self._stop.is_set():
                return
            if self._on_inbound is None:
                continue
            try:
                self._on_inbound(env)
            except Exception:  # the handler is the caller's; keep dispatching
                log.exception("inbound handler failed on %s seq %d", env.type.value, env.seq)


class _Acks:
    """PUBACK message ids from paho's thread; wakes the sender in batches, not per ack.

    The sender sets ``wake_at`` before it waits (a quarter window, or everything still
    in flight); waking late is harmless because the sender also wakes on a timeout.
    """

    def __init__(self, wake: threading.Event) -> None:
        self._ids: collections.deque[int] = collections.deque()
        self._wake = wake
        self.wake_at = 1

    def add(self, mid: int) -> None:
        self._ids.append(mid)
        if len(self._ids) >= self.wake_at:
            self._wake.set()

    def drain(self) -> list[int]:
        out = []
        while self._ids:
            out.append(self._ids.popleft())
        return out


def _status(online: bool) -> dict[str, str]:
    return {"state": (Status.ONLINE if online else Status.OFFLINE).value}


