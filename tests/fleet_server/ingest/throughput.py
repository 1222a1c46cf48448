"""Ingestion throughput through a real Mosquitto: N simulated devices (one paho
connection each, QoS 1) publish heartbeats; measured until every message is committed.
The raw broker rate (a plain auto-ack subscriber, same load) is measured in the same run.

    .venv/bin/python -m tests.fleet_server.ingest.throughput --devices 200 --messages 50
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.telemetry.envelope import Channel, device_filter, topic
from edgefleet.fleet_server.ingest import start_ingestion
from edgefleet.fleet_server.ingest.service import ingest_stats
from tests.agent.telemetry.support import RestartableMosquitto
from tests.fleet_server.ingest.support import HEARTBEAT, envelope, make_ingest_env
from tests.fleet_server.support import Env


@dataclass(frozen=True)
class Result:
    devices: int
    messages: int
    raw_rate: float        # messages/s delivered to a plain subscriber
    ingest_rate: float     # messages/s validated, deduplicated and committed
    lost: int
    drain_rate: float      # messages/s committed from a backlog queued at the broker

    def __str__(self) -> str:
        return (f"{self.devices} devices x {self.messages // self.devices} msgs = "
                f"{self.messages} QoS 1 messages: raw broker {self.raw_rate:,.0f} msg/s, "
                f"ingestion {self.ingest_rate:,.0f} msg/s "
                f"(ratio {self.ingest_rate / self.raw_rate:.2f}), lost {self.lost}; "
                f"draining a queued backlog: {self.drain_rate:,.0f} msg/s")


def _devices(host: str, port: int, n: int) -> list[paho.Client]:
    clients = []
    for i in range(n):
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{i}-{uuid.uuid4().hex[:6]}")
        c.max_queued_messages_set(0)
        c.connect(host, port)
        c.loop_start()
        clients.append(c)
    return clients


def _publish(clients: list[paho.Client], per_device: int, run: str) -> None:
    """Every device publishes ``per_device`` heartbeats with seq 1..n, concurrently."""
    def one(c: paho.Client, device: str) -> None:
        infos = [c.publish(topic(device, Channel.HEARTBEAT),
                           envelope(Channel.HEARTBEAT, device, HEARTBEAT, seq=s), qos=1)
                 for s in range(1, per_device + 1)]
        for info in infos:
            info.wait_for_publish(120)

    threads = [threading.Thread(target=one, args=(c, f"{run}-{i}"))
               for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _raw_rate(host: str, port: int, clients: list[paho.Client], per_device: int) -> float:
    total = len(clients) * per_device
    got = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(*args: object) -> None:
        nonlocal got
        got += 1
        if got >= total:
            done.set()

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:6]}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(device_filter(Channel.HEARTBEAT), qos=1)
    sub.connect(host, port)
    sub.loop_start()
    subscribed.wait(10)
    start = time.perf_counter()
    _publish(clients, per_device, f"raw{uuid.uuid4().hex[:4]}")
    done.wait(120)
    elapsed = time.perf_counter() - start
    sub.disconnect()
    sub.loop_stop()
    return total / elapsed


def _drain_rate(env: Env, host: str, port: int, clients: list[paho.Client],
                per_device: int) -> float:
    """Ingestion alone: the backlog is queued at the broker for the persistent session
    while ingestion is stopped, then drained."""
    client_id = f"ingest-drain-{uuid.uuid4().hex[:6]}"
    url = f"mqtt://{host}:{port}"
    first = start_ingestion(env.services, url, None, None, client_id=client_id)
    assert first.wait_connected(10)
    first.stop()
    base = ingest_stats(env.services.store)["accepted"]
    total = len(clients) * per_device
    _publish(clients, per_device, f"drn{uuid.uuid4().hex[:4]}")
    start = time.perf_counter()
    handle = start_ingestion(env.services, url, None, None, client_id=client_id)
    deadline = time.monotonic() + 300
    while ingest_stats(env.services.store)["accepted"] - base < total:
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    handle.stop()
    # discard the persistent session
    cleaner = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    cleaner.connect(host, port)
    cleaner.disconnect()
    return (ingest_stats(env.services.store)["accepted"] - base) / elapsed


def measure(host: str, port: int, data_dir: Path, devices: int, per_device: int) -> Result:
    env = make_ingest_env(data_dir)
    clients = _devices(host, port, devices)
    try:
        raw = _raw_rate(host, port, clients, per_device)
        handle = start_ingestion(env.services, f"mqtt://{host}:{port}", None, None,
                                 client_id=f"ingest-{uuid.uuid4().hex[:6]}", persistent=False)
        assert handle.wait_connected(10)
        handle.ingester.wait_idle(5)
        total = devices * per_device
        base = ingest_stats(env.services.store)["accepted"]
        start = time.perf_counter()
        _publish(clients, per_device, f"ing{uuid.uuid4().hex[:4]}")
        deadline = time.monotonic() + 300
        while ingest_stats(env.services.store)["accepted"] - base < total:
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        accepted = ingest_stats(env.services.store)["accepted"] - base
        handle.stop()
        drain = _drain_rate(env, host, port, clients, per_device)
        return Result(devices, total, raw, accepted / elapsed, total - accepted, drain)
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        env.services.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--messages", type=int, default=50, help="per device")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        broker = RestartableMosquitto(Path(tmp))
        broker.conf.write_text(broker.conf.read_text().replace("persistence true",
                                                               "persistence false"))
        broker.start()
        try:
            result = measure(broker.host, broker.port, Path(tmp) / "data", args.devices,
                             args.messages)
        finally:
            broker.stop()
    sys.stdout.write(f"{result}\n")


if __name__ == "__main__":
    main()
