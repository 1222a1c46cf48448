"""At-least-once delivery through broker outages and agent crashes (real Mosquitto).

The subscriber deduplicates on (device, bd, seq) like the fleet server does; what it
keeps must be every record the outbox accepted, in seq order.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgefleet.agent.telemetry import TelemetryClient, TelemetryConfig
from edgefleet.agent.telemetry.client import OUTBOX_FILE
from edgefleet.agent.telemetry.envelope import Channel
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from tests.agent.telemetry.support import (
    Collector,
    RestartableMosquitto,
    new_device_id,
    wait_until,
)

FAST = TelemetryConfig(heartbeat_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.5,
                       max_inflight=64)


def _check_order_and_historical(sub: Collector, device: str) -> None:
    """First arrivals are in seq order; historical is set exactly on replays.

    A replay is a record sent on a later connection than the one it was created under:
    the connection a message arrived on is the ``bd`` of the latest ``birth`` before
    it (one publisher's messages reach a subscriber in order).
    """
    seen: set[tuple[int, int]] = set()
    last_seq = 0
    current_bd = 0
    for m in sub.of(device):
        env = m.envelope
        if env.type is Channel.BIRTH:
            current_bd = env.bd
        if env.type is not Channel.PREDICTIONS or (env.bd, env.seq) in seen:
            continue
        seen.add((env.bd, env.seq))
        assert env.seq > last_seq, f"seq {env.seq} arrived after {last_seq}"
        last_seq = env.seq
        assert env.historical == (env.bd < current_bd), (env, current_bd)


def test_broker_restart_under_load_loses_nothing(own_broker: RestartableMosquitto,
                                                 tmp_path: Path) -> None:
    sub = Collector(own_broker.host, own_broker.port, persistent=True).start()
    device = new_device_id()
    client = TelemetryClient(device, BrokerConfig.from_url(own_broker.url), tmp_path / "state",
                             FAST)
    client.start()
    accepted: list[int] = []
    during_outage: list[int] = []
    outage = threading.Event()
    done = threading.Event()

    def produce() -> None:
        i = 0
        while not done.is_set():
            broker_down = outage.is_set()
            seq = client.publish(Channel.PREDICTIONS, {"i": i, "records": [i] * 20})
            accepted.append(seq)
            if broker_down and outage.is_set():  # no broker from before to after the put
                during_outage.append(seq)
            i += 1
            if i % 20 == 0:
                time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: len(sub.unique(device, Channel.PREDICTIONS)) > 500, what="traffic")
        own_broker.stop()
        outage.set()  # only records put while no broker runs: all must be replays
        time.sleep(2.0)
        outage.clear()
        own_broker.start()
        wait_until(lambda: len(sub.of(device, Channel.BIRTH)) >= 2, what="reconnect")
        time.sleep(0.5)
    finally:
        done.set()
        producer.join()
    try:
        wait_until(lambda: {s for _, s in sub.unique(device, Channel.PREDICTIONS)}
                   >= set(accepted), timeout_s=60, what="every accepted record")
        got = sub.unique(device, Channel.PREDICTIONS)
        assert sorted(s for _, s in got) == sorted(accepted)  # exactly once after dedup
        assert during_outage, "the producer did not run during the outage"
        _check_order_and_historical(sub, device)
        first = {env.seq: env for env in reversed(list(got.values()))}
        assert all(first[s].historical for s in during_outage)
        assert client.stats().outbox.dropped == 0
        assert sub.invalid == []
    finally:
        client.stop()
        sub.stop()


CHILD = """
import sys
from edgefleet.agent.telemetry import TelemetryClient, TelemetryConfig
from edgefleet.agent.telemetry.envelope import Channel
from edgefleet.agent.telemetry.mqtt import BrokerConfig

state, url, device = sys.argv[1:4]
client = TelemetryClient(device, BrokerConfig.from_url(url), state,
                         TelemetryConfig(heartbeat_s=1, max_inflight=32))
client.start()
i = 0
while True:
    seq = client.publish(Channel.PREDICTIONS, {"i": i, "records": [[i, 0.5]] * 50})
    sys.stdout.write(f"{seq}\\n")
    sys.stdout.flush()
    i += 1
"""


def test_sigkill_loses_nothing_committed(mosquitto: object, tmp_path: Path) -> None:
    host, port = mosquitto.host, mosquitto.port  # type: ignore[attr-defined]
    sub = Collector(host, port).start()
    device = new_device_id()
    state = tmp_path / "state"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), mosquitto.url, device],  # type: ignore[attr-defined]
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    reported: list[int] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        for line in child.stdout:
            reported.append(int(line))
            if len(reported) >= 4000 and sub.unique(device, Channel.PREDICTIONS):
                break
            assert time.monotonic() < deadline, "the child never got its messages through"
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
        reported += [int(x) for x in rest.split()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    db = sqlite3.connect(state / OUTBOX_FILE)
    try:
        committed = [s for (s,) in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        db.close()
    assert committed, "nothing was pending at the kill: the test proves nothing"

    client = TelemetryClient(device, BrokerConfig.from_url(mosquitto.url),  # type: ignore[attr-defined]
                             state, FAST)
    client.start()
    try:
        assert client.wait_drained(60)
        want = set(committed) | set(reported)
        wait_until(lambda: {s for _, s in sub.unique(device, Channel.PREDICTIONS)} >= want,
                   timeout_s=30, what="every committed record")
        _check_order_and_historical(sub, device)
        replayed = {env.seq for env in sub.unique(device, Channel.PREDICTIONS).values()
                    if env.historical}
        assert replayed & set(committed), "the backlog was not replayed as historical"
        assert sub.invalid == []
    finally:
        client.stop()
        sub.stop()
