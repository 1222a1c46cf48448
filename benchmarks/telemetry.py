"""(f) Telemetry and ingestion: agent publish rates and server ingestion throughput.

Every broker is started here on a free loopback port: Mosquitto (``/usr/sbin/mosquitto``,
``max_queued_messages 0``, no persistence) and the embedded amqtt broker.

* ``telemetry.publish-rate``: one ``TelemetryClient`` (durable outbox + its MQTT
  session, default config) while a producer thread publishes small prediction-like
  bodies; end to end: from the first ``publish`` until the outbox is empty (every row
  PUBACKed by Mosquitto at QoS 1).
* ``telemetry.predictions-rate``: the same with 500 prediction records per message.
* ``ingest.mosquitto`` / ``ingest.embedded``: server ingestion (``start_ingestion`` with
  a real app on a temporary data dir, non-persistent session, unique client id) while
  1,000 simulated devices (quick mode: 100) publish QoS 1 heartbeats.

  Load generator: ``PROCESSES`` child processes (``python -c`` subprocesses talking over
  stdin/stdout, so nothing depends on the caller's ``__main__``), each owning
  its share of the device connections as raw MQTT 3.1.1 sockets, packets built with the
  simulator's codec ``edgefleet.tools.simulate.mqtt`` (CONNECT with the device
  id as client id and username, pipelined QoS 1 PUBLISHes with valid envelopes, seq
  1..n, PUBACKs read back with ``selectors``). Raw sockets keep the generator cheap, so
  the 2 cores go to the broker and the ingestion. Connections are made before the clock
  starts; all devices then publish at once. The ingestion rate is messages accepted
  (validated, deduplicated, committed) divided by the time from "go" until the last one
  is committed; lost = sent - accepted. The raw broker rate is measured in the same run
  with the same load and a plain paho subscriber (QoS 1, auto-ack) in place of the
  ingestion.

  The embedded broker needs a ``BrokerAuth``: the benchmark uses a permissive stub that
  lets every connection in and allows every topic (load generator setup only; the real
  ``ServerBrokerAuth`` and its ACL are tested in tests/fleet_server/broker).
"""

from __future__ import annotations

import logging
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.figures import Figure, Goal, run_alone
from benchmarks.settings import Settings
from edgefleet.agent.telemetry import BrokerConfig, Channel, TelemetryClient
from edgefleet.agent.telemetry.envelope import Envelope, device_filter, encode, topic
from edgefleet.tools.simulate import mqtt

logger = logging.getLogger(__name__)

PROCESSES = 2
MOSQUITTO = "/usr/sbin/mosquitto"
HEARTBEAT: dict[str, Any] = {
    "uptime_s": 12.5, "rss_bytes": 1000, "cpu_percent": 1.5,
    "outbox": {"depth": 0, "bytes": 0, "dropped": 0},
    "inbound": {"rejected": 0, "dropped": 0},
    "models": {"iris": {"predictions": 42, "latency_ms": {"p50": 0.8, "p95": 2.1}}},
}
RECORDS_PER_MESSAGE = 500
WAIT_S = 120.0


def _quick(settings: Settings) -> bool:
    return settings.heavy_iterations < Settings().heavy_iterations


@dataclass(frozen=True)
class _Load:
    devices: int
    per_device: int

    @property
    def messages(self) -> int:
        return self.devices * self.per_device


# -- brokers -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


@contextmanager
def _mosquitto(workdir: Path) -> Iterator[str]:
    binary = MOSQUITTO if Path(MOSQUITTO).exists() else shutil.which("mosquitto")
    if binary is None:
        raise RuntimeError("the mosquitto broker binary is missing (scripts/setup.sh)")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 0\nmax_inflight_messages 1000\npersistence false\n"
                    f"log_dest file {workdir / 'mosquitto.log'}\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _AllowAll:
    """Permissive BrokerAuth for the load generator only (see the module docstring)."""

    def authenticate(self, username: str, password: str) -> bool:
        return True

    def may_publish(self, username: str, topic: str) -> bool:
        return True

    def may_subscribe(self, username: str, topic: str) -> bool:
        return True


@contextmanager
def _embedded() -> Iterator[str]:
    from edgefleet.fleet_server.broker import EmbeddedBroker

    broker = EmbeddedBroker("127.0.0.1", 0, _AllowAll())
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("mqtt://").rpartition(":")
    return host, int(port)


# -- (1, 2) one agent publishing through its outbox ----------------------------------------


def _agent_rate(url: str, state: Path, bodies: list[dict[str, Any]]) -> tuple[float, bool]:
    """Messages/s from the first publish until every row is PUBACKed; drained flag."""
    client = TelemetryClient(f"bench-{uuid.uuid4().hex[:8]}", BrokerConfig.from_url(url),
                             state)
    client.start()
    try:
        deadline = time.monotonic() + 10
        while not client.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # birth and status out of the way
        start = time.perf_counter()
        for body in bodies:
            client.publish(Channel.PREDICTIONS, body)
        drained = client.wait_drained(WAIT_S)
        return len(bodies) / (time.perf_counter() - start), drained
    finally:
        client.stop()


def _prediction(i: int) -> dict[str, Any]:
    return {"id": i, "ts": 1.7e9 + i, "label": i % 3, "score": 0.25 + (i % 50) / 100}


def _agent_figures(workdir: Path, url: str, quick: bool) -> Iterator[Figure]:
    n = 2000 if quick else 20000
    small = [{"model": "iris", "version": "1.0.0", "records": [_prediction(i)]}
             for i in range(n)]
    rate, drained = _agent_rate(url, workdir / "agent-small", small)
    yield Figure("telemetry.publish-rate", "one agent to Mosquitto, QoS 1, through outbox",
                 rate, "msg/s", 5000, Goal.AT_LEAST,
                 f"{n} ~{len(encode_body(small[0]))}-byte bodies published while the "
                 f"client drains, until all PUBACKed{'' if drained else '; NOT drained'}")
    batches = 40 if quick else 400
    batched = [{"model": "iris", "version": "1.0.0",
                "records": [_prediction(b * RECORDS_PER_MESSAGE + i)
                            for i in range(RECORDS_PER_MESSAGE)]}
               for b in range(batches)]
    rate, drained = _agent_rate(url, workdir / "agent-batched", batched)
    records = rate * RECORDS_PER_MESSAGE
    yield Figure("telemetry.predictions-rate", "prediction records/s, batched messages",
                 records, "rec/s", 100_000, Goal.AT_LEAST,
                 f"{batches} messages x {RECORDS_PER_MESSAGE} records "
                 f"(~{len(encode_body(batched[0])) // 1024} KiB), {rate:,.0f} msg/s, "
                 f"until all PUBACKed{'' if drained else '; NOT drained'}")


def encode_body(body: dict[str, Any]) -> bytes:
    return encode(Envelope(type=Channel.PREDICTIONS, device="bench", bd=1, seq=1,
                           ts=time.time(), historical=False, body=body))


# -- (3, 4) simulated devices over raw MQTT sockets ----------------------------------------


def _connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session + username + password, keepalive 300 s
    return mqtt.connect(client_id, username=client_id, password="bench", keepalive_s=300)


def _publish_packet(name: str, mid: int, payload: bytes) -> bytes:
    return mqtt.publish(name, payload, qos=1, mid=mid)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def _generator(url: str, run: str, first: int, count: int, per_device: int,
               inp: TextIO, out: TextIO) -> None:
    """Child process: ``count`` device connections; prints ``ready``, waits for ``go``,
    publishes, counts PUBACKs, prints ``acked seconds``, closes on ``close``."""
    host, port = _host_port(url)
    sockets: list[socket.socket] = []

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    try:
        packets: list[bytes] = []
        for i in range(first, first + count):
            device = f"{run}-{i}"
            sock = socket.create_connection((host, port), timeout=60)
            sock.sendall(_connect_packet(device))
            connack = _read_exact(sock, 4)
            if connack[0] != 0x20 or connack[3] != 0:
                raise ConnectionError(f"CONNACK refused: {connack!r}")
            sockets.append(sock)
            name = topic(device, Channel.HEARTBEAT)
            packets.append(b"".join(
                _publish_packet(name, seq, encode(Envelope(
                    type=Channel.HEARTBEAT, device=device, bd=1, seq=seq, ts=time.time(),
                    historical=False, body=HEARTBEAT)))
                for seq in range(1, per_device + 1)))
        say("ready")
        inp.readline()  # go
        start = time.perf_counter()
        sel = selectors.DefaultSelector()
        pending: dict[socket.socket, bytes] = {}
        buffers: dict[socket.socket, bytes] = {}
        for sock, data in zip(sockets, packets, strict=True):
            sock.setblocking(False)
            pending[sock] = data
            buffers[sock] = b""
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        acked = 0
        expected = count * per_device
        deadline = time.monotonic() + WAIT_S
        while acked < expected and time.monotonic() < deadline:
            for key, events in sel.select(timeout=1.0):
                sock = key.fileobj  # type: ignore[assignment]
                if events & selectors.EVENT_WRITE and pending.get(sock):
                    sent = sock.send(pending[sock])
                    pending[sock] = pending[sock][sent:]
                    if not pending[sock]:
                        sel.modify(sock, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    chunk = sock.recv(65536)
                    if not chunk:
                        sel.unregister(sock)
                        continue
                    buf = buffers[sock] + chunk
                    whole = len(buf) - len(buf) % 4  # PUBACK: 0x40 0x02 mid mid
                    acked += sum(1 for i in range(0, whole, 4) if buf[i] == 0x40)
                    buffers[sock] = buf[whole:]
        say(f"{acked} {time.perf_counter() - start}")
        inp.readline()  # close
    except Exception as exc:  # report to the parent rather than hang it
        say(f"error: {exc!r}")
    finally:
        for sock in sockets:
            with suppress(OSError):
                sock.setblocking(True)
                sock.sendall(b"\xe0\x00")
            sock.close()


def _generator_main(argv: list[str]) -> None:
    """Entry point of a generator process: ``url run first count per_device``."""
    url, run, first, count, per_device = argv
    _generator(url, run, int(first), int(count), int(per_device), sys.stdin, sys.stdout)


def _spawn_generator(url: str, run: str, first: int, count: int,
                     per_device: int) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    code = "import sys; from benchmarks.telemetry import _generator_main; " \
           "_generator_main(sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, url, run, str(first), str(count), str(per_device)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env=env, cwd=root)


def _tell(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    with suppress(OSError):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


def _hear(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line or line.startswith("error"):
        raise RuntimeError(f"load generator failed: {line or 'exited'}")
    return line


@dataclass(frozen=True)
class _Pass:
    sent: int
    acked: int
    publish_s: float
    delivered: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _run_load(url: str, load: _Load, received: Callable[[], int],
              before_go: Callable[[], None] | None = None) -> _Pass:
    """Connect every device, start them together, wait until ``received()`` (counted
    from zero by the caller) reaches the load or stops moving."""
    run = f"b{uuid.uuid4().hex[:6]}"
    share = -(-load.devices // PROCESSES)
    procs: list[subprocess.Popen[str]] = []
    for p in range(PROCESSES):
        first, count = p * share, min(share, load.devices - p * share)
        if count > 0:
            procs.append(_spawn_generator(url, run, first, count, load.per_device))
    try:
        for proc in procs:
            _hear(proc)  # ready
        if before_go is not None:
            before_go()
        start = time.perf_counter()
        for proc in procs:
            _tell(proc, "go")
        last, last_change = -1, time.monotonic()
        while True:
            got = received()
            now = time.monotonic()
            if got != last:
                last, last_change = got, now
            if got >= load.messages or now - last_change > 10.0 or now - start > WAIT_S:
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        acked, publish_s = 0, 0.0
        for proc in procs:
            n, seconds = _hear(proc).split()
            acked += int(n)
            publish_s = max(publish_s, float(seconds))
        return _Pass(load.messages, acked, publish_s, received(), elapsed)
    finally:
        for proc in procs:
            _tell(proc, "close")
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with suppress(OSError):
                        stream.close()


def _raw_pass(url: str, load: _Load) -> _Pass:
    """The same load into a plain auto-ack QoS 1 subscriber."""
    host, port = _host_port(url)
    count = 0
    subscribed = threading.Event()

    def on_message(*args: object) -> None:
        nonlocal count
        count += 1

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:8]}")
    sub.max_queued_messages_set(0)
    sub.username_pw_set("raw-subscriber", "bench")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(device_filter(Channel.HEARTBEAT), qos=1)
    sub.connect(host, port)
    sub.loop_start()
    try:
        if not subscribed.wait(10):
            raise RuntimeError("raw subscriber did not subscribe")
        return _run_load(url, load, lambda: count)
    finally:
        sub.disconnect()
        sub.loop_stop()


def _services(data_dir: Path) -> Any:
    from edgefleet.fleet_server.app import FEATURES, all_components, create_app
    from edgefleet.fleet_server.config import load_config
    from edgefleet.fleet_server.datadir import init_data_dir

    init_data_dir(data_dir, all_components())
    app = create_app(load_config(data_dir, env={}, session_cookie_secure=False),
                     features=list(FEATURES))
    return app.extensions["edgefleet"]


def _ingest_pass(url: str, load: _Load, data_dir: Path) -> tuple[_Pass, dict[str, Any]]:
    from edgefleet.fleet_server.ingest import start_ingestion
    from edgefleet.fleet_server.ingest.service import ingest_stats

    services = _services(data_dir)
    handle = start_ingestion(services, url, "ingest", "bench",
                             client_id=f"ingest-bench-{uuid.uuid4().hex[:8]}",
                             persistent=False)
    try:
        if not handle.wait_connected(10):
            raise RuntimeError("ingestion did not connect")
        handle.ingester.wait_idle(5)
        # The in-memory count of committed accepted messages: polling ingest_stats (which
        # reads every device's dedup row) every 5 ms would load the measured process.
        base = handle.ingester.accepted  # e.g. retained status messages of earlier runs
        result = _run_load(url, load, lambda: handle.ingester.accepted - base)
        handle.ingester.wait_idle(5)
        stats = ingest_stats(services.store)
        return result, stats
    finally:
        handle.stop()
        services.store.close()


def _ingest_figure(key: str, label: str, goal: float, url: str, load: _Load,
                   data_dir: Path, note: str) -> Figure:
    raw = _raw_pass(url, load)
    ingest, stats = _ingest_pass(url, load, data_dir)
    lost = ingest.sent - ingest.delivered
    ratio = ingest.rate / raw.rate if raw.rate else 0.0
    rejected = stats.get("rejected", {})
    detail = (f"{load.devices} device connections x {load.per_device} QoS 1 heartbeats = "
              f"{load.messages}; committed {ingest.delivered}, lost {lost}, "
              f"PUBACKed {ingest.acked} in {ingest.publish_s:.1f} s, "
              f"duplicates {stats.get('duplicates', 0)}, "
              f"rejected {rejected.get('total', 0) if isinstance(rejected, dict) else rejected}"
              f"; raw broker {raw.rate:,.0f} msg/s "
              f"({raw.delivered}/{raw.sent} delivered to a plain subscriber), "
              f"ratio {ratio:.2f}; {note}; load average {os.getloadavg()[0]:.1f}")
    value = ingest.rate if lost == 0 else 0.0
    if lost:
        detail = f"LOST {lost} messages, figure set to 0; " + detail
    return Figure(key, label, value, "msg/s", goal, Goal.AT_LEAST, detail)


def run(workdir: Path, settings: Settings) -> Iterator[Figure]:
    quick = _quick(settings)
    logging.getLogger("edgefleet").setLevel(logging.ERROR)
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    base = Path(tempfile.mkdtemp(prefix="telemetry-", dir=workdir))
    devices = 100 if quick else 1000
    with _mosquitto(base) as url:
        yield from _agent_figures(base, url, quick)
        yield _ingest_figure("ingest.mosquitto", "server ingestion through Mosquitto", 5000,
                             url, _Load(devices, 10 if quick else 20),
                             base / "data-mosquitto",
                             f"{PROCESSES} raw-socket generator processes")
    with _embedded() as url:
        yield _ingest_figure("ingest.embedded", "server ingestion through embedded broker",
                             1500, url, _Load(devices, 5 if quick else 10),
                             base / "data-embedded",
                             "permissive stub BrokerAuth (benchmark load setup only)")


if __name__ == "__main__":
    run_alone("telemetry", __doc__, run)
