"""The simulator's event loop: N device connections on one ``selectors`` selector.

No thread per device and no MQTT library: each device is a non-blocking socket, a
:class:`~.mqtt.PacketReader` and an output buffer; a heap of timers says which device
has something due next (:meth:`SimDevice.next_due`). Connections are opened
``connect_batch`` at a time so the broker's listen backlog never overflows; a dropped
connection is reopened after a short backoff with ``bd`` + 1, as the agent does.

Only :meth:`Fleet.stop` and :meth:`Fleet.stats` may be called from another thread (or a
signal handler); everything else runs on the thread that called :meth:`Fleet.run`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import heapq
import logging
import resource
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edgefleet.tools.simulate import mqtt
from edgefleet.tools.simulate.device import DeviceConfig, Message, SimDevice
from edgefleet.tools.simulate.errors import BrokerError, CapacityError, SimulateConfigError
from edgefleet.tools.simulate.windows import WindowSource

log = logging.getLogger(__name__)

LIBRARY = "edgefleet.tools.simulate.mqtt (own MQTT 3.1.1 codec) on selectors"
FD_MARGIN = 64  # descriptors kept for the process itself (stdio, selector, logs)
_RECV_BYTES = 65536
_MAX_WAIT_S = 0.25  # longest select(): how soon stop() takes effect


class ConnState(enum.Enum):
    WAITING = "waiting"  # not opened yet, or waiting to reconnect
    CONNECTING = "connecting"  # TCP connect in progress
    CONNACK = "connack"  # CONNECT sent, waiting for CONNACK
    UP = "up"
    REFUSED = "refused"  # the broker refused the credentials: never retried


@dataclass(frozen=True)
class FleetConfig:
    """Where and how the devices connect.

    Attributes:
        host, port: the broker.
        devices: how many devices; ids are ``{prefix}-{i:05d}`` for i from ``first``,
            or ``ids[first:first + devices]`` when ``ids`` is given.
        ids: explicit device ids (the server assigns them at enrollment).
        password: one password for every device (None: connect without a password).
        passwords: ``{device_id: password}``; takes precedence over ``password``.
        keepalive_s: MQTT keepalive; a PINGREQ goes out when nothing was sent for half.
        connect_batch: TCP connects + CONNACKs outstanding at once.
        connect_timeout_s: a connection attempt older than this is dropped and retried.
        reconnect_s: delay before reopening a dropped connection.
    """

    host: str
    port: int
    devices: int
    prefix: str = "sim"
    first: int = 0
    password: str | None = None
    passwords: Mapping[str, str] | None = None
    ids: tuple[str, ...] = ()
    keepalive_s: int = 120
    connect_batch: int = 200
    connect_timeout_s: float = 30.0
    reconnect_s: float = 2.0

    def device_id(self, i: int) -> str:
        if self.ids:
            return self.ids[self.first + i]
        return f"{self.prefix}-{self.first + i:05d}"


@dataclass(frozen=True)
class FleetStats:
    """A snapshot of the fleet (counters since :meth:`Fleet.run` started)."""

    devices: int
    connected: int
    refused: int
    published: int
    acked: int
    received: int
    connects: int
    drops: int
    installs: int
    failures: int
    installing: int
    versions: Mapping[str, int]
    elapsed_s: float
    errors: tuple[str, ...] = ()


class _Conn:
    __slots__ = (
        "device",
        "dirty",
        "inflight",
        "last_send",
        "next_mid",
        "out",
        "reader",
        "retry_at",
        "since",
        "sock",
        "state",
        "timer",
        "writing",
    )

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.sock: socket.socket | None = None
        self.reader = mqtt.PacketReader()
        self.out = bytearray()
        self.state = ConnState.WAITING
        self.next_mid = 0
        self.inflight: set[int] = set()
        self.last_send = 0.0
        self.since = 0.0
        self.writing = False
        self.dirty = False  # queued for the flush at the end of this loop turn
        self.retry_at = 0.0
        self.timer = float("inf")  # the due time of this device's live heap entry

    def mid(self) -> int:
        for _ in range(mqtt.MAX_MID):
            self.next_mid = self.next_mid % mqtt.MAX_MID + 1
            if self.next_mid not in self.inflight:
                return self.next_mid
        raise BrokerError("65535 QoS 1 messages unacknowledged on one connection")


def raise_nofile_limit(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit.

    Raises:
        CapacityError: ``connections`` sockets (plus a margin) cannot fit under the hard
            limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, connections + FD_MARGIN)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if connections + FD_MARGIN > soft:
        raise CapacityError(
            f"{connections} connections need about {connections + FD_MARGIN} file "
            f"descriptors, but the hard limit (RLIMIT_NOFILE) is {hard}: raise it "
            f"(ulimit -Hn, or LimitNOFILE= in systemd) or simulate fewer devices")
    return soft


class Fleet:
    """N simulated devices over N MQTT connections in one thread.

    Args:
        config: broker and connection settings.
        device: behaviour shared by the devices.
        windows: drift window source (None: no drift windows).
        clock: unix seconds (injected for tests of the loop's timing).
    """

    def __init__(self, config: FleetConfig, device: DeviceConfig,
                 windows: WindowSource | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        if config.ids and config.first + config.devices > len(config.ids):
            raise SimulateConfigError(f"{config.devices} devices from number {config.first} "
                                      f"asked for, but only {len(config.ids)} ids given")
        self.config = config
        self.device_config = device
        self._clock = clock
        now = clock()
        bd, seq = int(now), int(now * 1000)  # monotonic across runs (see SimDevice)
        self.devices = [SimDevice(config.device_id(i), device, windows, index=i, started=now,
                                  bd=bd, seq=seq)
                        for i in range(config.devices)]
        self._conns = [_Conn(d) for d in self.devices]
        self._by_fd: dict[int, _Conn] = {}
        self._timers: list[tuple[float, int]] = []
        self._sel: selectors.BaseSelector | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._started = 0.0
        self._pending_connects = 0
        self._next_open = 0  # conns[: _next_open] were opened at least once
        self._errors: Counter[str] = Counter()
        self._retry: list[_Conn] = []
        self._dirty: list[_Conn] = []
        self.published = self.acked = self.received = self.connects = self.drops = 0
        self.refused = 0

    # -- public ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to disconnect every device and return (thread- and signal-safe)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stats(self) -> FleetStats:
        """A snapshot; safe from another thread (counters may be a moment apart)."""
        conns = list(self._conns)
        versions = Counter(c.device.version for c in conns)
        return FleetStats(
            devices=len(conns),
            connected=sum(1 for c in conns if c.state is ConnState.UP),
            refused=self.refused, published=self.published, acked=self.acked,
            received=self.received, connects=self.connects, drops=self.drops,
            installs=sum(c.device.installs for c in conns),
            failures=sum(c.device.failures for c in conns),
            installing=sum(1 for c in conns if c.device.install is not None),
            versions=dict(sorted(versions.items())),
            elapsed_s=(time.monotonic() - self._started) if self._started else 0.0,
            errors=tuple(f"{k} x{v}" for k, v in self._errors.most_common(5)))

    def run(self, duration_s: float | None = None, *,
            progress: Callable[[FleetStats], None] | None = None,
            progress_every_s: float = 5.0) -> FleetStats:
        """Connect every device and simulate until ``duration_s`` passed or :meth:`stop`.

        Raises:
            CapacityError: the connections cannot fit (file descriptors, local ports).
            BrokerError: the broker refused every device's credentials.
        """
        raise_nofile_limit(len(self._conns) + 1)
        self._started = time.monotonic()
        end = None if duration_s is None else self._started + duration_s
        next_progress = self._started + progress_every_s
        next_ping_scan = self._started + 1.0
        self._sel = selectors.DefaultSelector()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                mono = time.monotonic()
                if end is not None and mono >= end:
                    break
                now = self._clock()
                self._open_more(now)
                self._fire_timers(now)
                self._flush_dirty()
                wait = _MAX_WAIT_S
                if self._timers:
                    wait = min(wait, max(0.0, self._timers[0][0] - now))
                for key, events in self._sel.select(wait):
                    conn = key.data
                    if conn is None:
                        self._drain_wake()
                        continue
                    self._on_events(conn, events)
                self._flush_dirty()
                mono = time.monotonic()
                if mono >= next_ping_scan:
                    self._housekeeping(mono)
                    next_ping_scan = mono + 1.0
                if progress is not None and mono >= next_progress:
                    progress(self.stats())
                    next_progress = mono + progress_every_s
                if self.refused == len(self._conns):
                    raise BrokerError(f"the broker refused all {self.refused} devices: "
                                      f"{', '.join(self._errors)}")
            return self.stats()
        finally:
            self._shutdown()

    # -- connecting -----------------------------------------------------------------------
    def _open_more(self, now: float) -> None:
        cfg = self.config
        mono = time.monotonic()
        while self._pending_connects < cfg.connect_batch and self._next_open < len(self._conns):
            self._open(self._conns[self._next_open], now)
            self._next_open += 1
        if self._retry and self._pending_connects < cfg.connect_batch:
            later: list[_Conn] = []
            for conn in self._retry:
                if self._pending_connects < cfg.connect_batch and conn.retry_at <= mono:
                    self._open(conn, now)
                else:
                    later.append(conn)
            self._retry = later

    def _open(self, conn: _Conn, now: float) -> None:
        assert self._sel is not None
        cfg = self.config
        device = conn.device
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((cfg.host, cfg.port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            if code in (errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE):
                raise CapacityError(f"cannot open connection {self.connects + 1} to "
                                    f"{cfg.host}:{cfg.port}: {errno.errorcode.get(code, code)} "
                                    f"(out of local ports or file descriptors)")
            self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
            return
        will = device.begin_connection(now)
        password = (cfg.passwords or {}).get(device.device_id, cfg.password)
        conn.sock = sock
        conn.reader = mqtt.PacketReader()
        conn.out = bytearray(mqtt.connect(
            device.device_id, username=device.device_id, password=password,
            keepalive_s=cfg.keepalive_s,
            will=mqtt.Will(will.topic, will.payload, qos=1, retain=True)))
        conn.inflight.clear()
        conn.state = ConnState.CONNECTING
        conn.since = time.monotonic()
        conn.writing = True
        self._by_fd[sock.fileno()] = conn
        self._sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        self._pending_connects += 1

    def _fail(self, conn: _Conn, reason: str, *, refused: bool = False) -> None:
        """Close ``conn``; reconnect later unless refused or stopping."""
        self._errors[reason] += 1
        if conn.state is ConnState.UP:
            self.drops += 1
        elif conn.state in (ConnState.CONNECTING, ConnState.CONNACK):
            self._pending_connects -= 1
        self._close(conn)
        if refused:
            conn.state = ConnState.REFUSED
            self.refused += 1
        else:
            conn.state = ConnState.WAITING
            conn.retry_at = time.monotonic() + self.config.reconnect_s
            self._retry.append(conn)

    def _close(self, conn: _Conn) -> None:
        sock, conn.sock = conn.sock, None
        if sock is None:
            return
        self._by_fd.pop(sock.fileno(), None)
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
        sock.close()
        conn.out.clear()
        conn.writing = False

    # -- I/O ------------------------------------------------------------------------------
    def _on_events(self, conn: _Conn, events: int) -> None:
        if conn.sock is None:
            return
        if events & selectors.EVENT_WRITE:
            if conn.state is ConnState.CONNECTING:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._fail(conn, f"connect: {errno.errorcode.get(err, err)}")
                    return
                conn.state = ConnState.CONNACK
            self._flush(conn)
        if events & selectors.EVENT_READ and conn.sock is not None:
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        assert conn.sock is not None
        try:
            data = conn.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(conn, f"recv: {e.strerror or e}")
            return
        if not data:
            self._fail(conn, "closed by the broker")
            return
        try:
            packets = conn.reader.feed(data)
        except mqtt.MqttProtocolError as e:
            self._fail(conn, f"protocol: {e}")
            return
        for packet in packets:
            if conn.sock is None:
                return
            self._on_packet(conn, packet)

    def _on_packet(self, conn: _Conn, packet: mqtt.Packet) -> None:
        kind = packet.type
        if kind is mqtt.PacketType.PUBACK:
            mid = mqtt.parse_mid(packet)
            if mid in conn.inflight:
                conn.inflight.discard(mid)
                self.acked += 1
        elif kind is mqtt.PacketType.PUBLISH:
            self._on_publish(conn, mqtt.parse_publish(packet))
        elif kind is mqtt.PacketType.CONNACK:
            self._on_connack(conn, packet)
        elif kind is mqtt.PacketType.SUBACK:
            _, granted = mqtt.parse_suback(packet)
            if any(g == 0x80 for g in granted):
                self._errors["subscription to desired refused"] += 1

    def _on_connack(self, conn: _Conn, packet: mqtt.Packet) -> None:
        _, code = mqtt.parse_connack(packet)
        if code is not mqtt.ConnackCode.ACCEPTED:
            self._fail(conn, f"CONNACK {code.name}",
                       refused=code in (mqtt.ConnackCode.BAD_CREDENTIALS,
                                        mqtt.ConnackCode.NOT_AUTHORIZED,
                                        mqtt.ConnackCode.IDENTIFIER_REJECTED))
            return
        self._pending_connects -= 1
        conn.state = ConnState.UP
        conn.retry_at = 0.0
        self.connects += 1
        now = self._clock()
        device = conn.device
        sub_mid = conn.mid()
        self._send(conn, mqtt.subscribe(sub_mid, [(device.desired_topic, 1)]))
        for message in device.connected(now):
            self._publish(conn, message)
        self._schedule(conn)

    def _on_publish(self, conn: _Conn, pub: mqtt.Publish) -> None:
        self.received += 1
        if pub.qos == 1:
            self._send(conn, mqtt.puback(pub.mid))
        device = conn.device
        if pub.topic == device.desired_topic and device.on_desired(pub.payload, self._clock()):
            self._schedule(conn)

    def _publish(self, conn: _Conn, message: Message) -> None:
        qos = self.device_config.qos
        mid = 0
        if qos:
            mid = conn.mid()
            conn.inflight.add(mid)
        self._send(conn, mqtt.publish(message.topic, message.payload, qos=qos, mid=mid,
                                      retain=message.retain))
        self.published += 1

    def _send(self, conn: _Conn, data: bytes) -> None:
        """Queue ``data``; it goes out in one ``send`` per connection per loop turn."""
        conn.out += data
        conn.last_send = time.monotonic()
        if not conn.writing and not conn.dirty and conn.state is ConnState.UP:
            conn.dirty = True
            self._dirty.append(conn)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.dirty = False
            if not conn.writing:
                self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None:
            return
        if conn.out:
            try:
                sent = sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                self._fail(conn, f"send: {e.strerror or e}")
                return
            del conn.out[:sent]
        want_write = bool(conn.out) or conn.state is ConnState.CONNECTING
        if want_write != conn.writing and self._sel is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._sel.modify(sock, events, conn)
            conn.writing = want_write

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass

    # -- timers ---------------------------------------------------------------------------
    def _schedule(self, conn: _Conn) -> None:
        due = conn.device.next_due()
        if due < conn.timer:
            conn.timer = due
            heapq.heappush(self._timers, (due, conn.device.index))

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, index = heapq.heappop(timers)
            conn = self._conns[index]
            if due != conn.timer:
                continue  # superseded by an earlier entry
            conn.timer = float("inf")
            if conn.state is not ConnState.UP:
                continue  # rescheduled on the next CONNACK
            for message in conn.device.due(now):
                self._publish(conn, message)
            self._schedule(conn)

    def _housekeeping(self, mono: float) -> None:
        """PINGREQ for idle connections; drop connection attempts that hang."""
        idle_s = self.config.keepalive_s / 2
        timeout = self.config.connect_timeout_s
        for conn in self._conns:
            if conn.state is ConnState.UP:
                if mono - conn.last_send >= idle_s:
                    self._send(conn, mqtt.PINGREQ)
            elif (conn.state in (ConnState.CONNECTING, ConnState.CONNACK)
                  and mono - conn.since > timeout):
                self._fail(conn, "connect timed out")

    # -- stopping -------------------------------------------------------------------------
    def _shutdown(self, timeout_s: float = 5.0) -> None:
        """Publish ``offline`` and DISCONNECT every connected device, then close all."""
        now = self._clock()
        up = [c for c in self._conns if c.state is ConnState.UP and c.sock is not None]
        for conn in up:
            self._publish(conn, conn.device.offline(now))
            self._send(conn, mqtt.DISCONNECT)
        self._flush_dirty()
        deadline = time.monotonic() + timeout_s
        while self._sel is not None and time.monotonic() < deadline:
            if not any(c.out for c in up if c.sock is not None):
                break
            for key, events in self._sel.select(0.1):
                if key.data is not None and events & selectors.EVENT_WRITE:
                    self._flush(key.data)
        for conn in self._conns:
            self._close(conn)
            if conn.state is not ConnState.REFUSED:
                conn.state = ConnState.WAITING
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        self._wake_r.close()
        self._wake_w.close()

