"""End to end: real agents → a real Mosquitto → real server ingestion → SQLite → API.

Issue 5's reliability tests with every part real (no mocks): a Mosquitto this module
starts on a free port (stopped and restarted on the same port), ``TelemetryClient``
agents (one in a child process that gets SIGKILLed), agent ``Daemon``s serving an ONNX
model, ``start_ingestion`` writing into the server database, and the fleet drift
evaluation job with the Flask API on top.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.daemon.config import load_config
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.drift import ReferenceProfile
from edgefleet.agent.telemetry import TelemetryClient, TelemetryConfig
from edgefleet.agent.telemetry.client import OUTBOX_FILE
from edgefleet.agent.telemetry.envelope import Channel
from edgefleet.agent.telemetry.mqtt import BrokerConfig
from edgefleet.fleet_server.audit import SYSTEM
from edgefleet.fleet_server.fleetdrift import fleetdrift_service, jobs
from edgefleet.fleet_server.ingest import IngestionHandle, start_ingestion
from edgefleet.fleet_server.ingest.writer import IngestConfig
from edgefleet.fleet_server.registry.api import registry_service
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from tests.agent.daemon.support import write_config
from tests.agent.telemetry.support import RestartableMosquitto, new_device_id, wait_until
from tests.fleet_server.fleetdrift.support import write_onnx
from tests.fleet_server.ingest.support import make_ingest_env
from tests.fleet_server.support import Env, Role

MODEL, VERSION = "e2e", "1.0.0"
FAST = TelemetryConfig(heartbeat_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.5,
                       max_inflight=64)
KEEP_ALL = IngestConfig(predictions_keep_per_device=1_000_000)  # nothing pruned


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RestartableMosquitto]:
    """A Mosquitto (persistence on) only this test uses, on a free port."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    mosquitto = RestartableMosquitto(workdir)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """The real server app (ingest + fleetdrift features) on a fresh data dir."""
    environment = make_ingest_env(tmp_path / "data")
    yield environment
    fleetdrift_service(environment.services).close()
    environment.services.store.close()


@pytest.fixture
def ingestion(env: Env, broker: RestartableMosquitto) -> Iterator[IngestionHandle]:
    """Server ingestion with a persistent session (the broker queues for it while it is
    away) under a client id unique to this test."""
    handle = start_ingestion(env.services, broker.url, None, None, config=KEEP_ALL,
                             client_id=f"e2e-ingest-{uuid.uuid4().hex[:8]}",
                             persistent=True)
    assert handle.wait_connected(10), "ingestion did not subscribe"
    yield handle
    handle.stop()


# -- helpers -----------------------------------------------------------------------------


def stored(env: Env, device: str) -> list[tuple[int, str]]:
    """``(seq, record id)`` of the device's rows in ``ingest_predictions``, in the order
    the server stored them."""
    rows = env.services.store.db.execute(
        "SELECT seq, record FROM ingest_predictions WHERE device_id = ? ORDER BY id",
        [device]).fetchall()
    return [(int(seq), str(json.loads(record)["id"])) for seq, record in rows]


def count(env: Env, table: str, device: str) -> int:
    return int(env.services.store.db[table].count_where("device_id = ?", [device]))


def arrived(env: Env, device: str, want: set[str]) -> Callable[[], bool]:
    """A condition: every record id in ``want`` is stored for ``device``."""
    return lambda: {rid for _, rid in stored(env, device)} >= want


def assert_exactly_once_in_order(got: list[tuple[int, str]], want: list[str]) -> None:
    ids = [rid for _, rid in got]
    dupes = [rid for rid, n in Counter(ids).items() if n > 1]
    assert not dupes, f"{len(dupes)} records stored twice, e.g. {dupes[:3]}"
    missing = set(want) - set(ids)
    assert not missing, f"{len(missing)} accepted records missing, e.g. {sorted(missing)[:3]}"
    assert ids == want, "records stored out of publish order"
    seqs = [seq for seq, _ in got]
    assert seqs == sorted(seqs), "seq order broken in the database"


# -- 1. broker restart under load --------------------------------------------------------


def test_broker_restart_under_load_loses_nothing(broker: RestartableMosquitto, env: Env,
                                                 ingestion: IngestionHandle,
                                                 tmp_path: Path) -> None:
    devices = [new_device_id() for _ in range(3)]
    clients = {d: TelemetryClient(d, BrokerConfig.from_url(broker.url), tmp_path / d, FAST,
                                  models={MODEL: VERSION}) for d in devices}
    accepted: dict[str, list[str]] = {d: [] for d in devices}
    offline_puts: dict[str, int] = dict.fromkeys(devices, 0)
    outage = threading.Event()
    done = threading.Event()

    def produce(device: str, client: TelemetryClient) -> None:
        i = 0
        while not done.is_set():
            down = outage.is_set()
            ids = [f"{device}/{i}/{j}" for j in range(5)]
            records = [{"id": rid, "ts": time.time(), "y": [j]} for j, rid in enumerate(ids)]
            client.publish(Channel.PREDICTIONS, {"model": MODEL, "version": VERSION,
                                                 "records": records})
            accepted[device].extend(ids)  # the outbox accepted (committed) them
            if down and outage.is_set():
                offline_puts[device] += 1
            i += 1
            time.sleep(0.01)

    with ExitStack() as stack:
        for client in clients.values():
            client.start()
            stack.callback(client.stop)
        producers = [threading.Thread(target=produce, args=(d, c)) for d, c in clients.items()]
        for t in producers:
            t.start()
        try:
            wait_until(lambda: all(count(env, "ingest_predictions", d) >= 50 for d in devices),
                       what="traffic in the database before the outage")
            broker.stop()
            outage.set()
            time.sleep(2.0)
            outage.clear()
            broker.start()
            at_restart = {d: len(accepted[d]) for d in devices}
            # records published after the restart reach the database: agents and
            # ingestion both reconnected
            wait_until(lambda: all(count(env, "ingest_predictions", d) > at_restart[d] + 50
                                   for d in devices), timeout_s=30,
                       what="traffic after the restart")
        finally:
            done.set()
            for t in producers:
                t.join()
        for device in devices:
            wait_until(arrived(env, device, set(accepted[device])), timeout_s=30,
                       what=f"every accepted record of {device}")
            assert clients[device].stats().outbox.dropped == 0
    # agents stopped: let late re-sends (duplicates) land before counting
    assert ingestion.ingester.wait_idle(10)
    for device in devices:
        assert_exactly_once_in_order(stored(env, device), accepted[device])
        assert offline_puts[device] > 0, "nothing was published during the outage"
    total = sum(len(v) for v in accepted.values()) // 5
    assert total >= 300, f"only {total} messages: not under load"


# -- 2. SIGKILL of an agent during heavy logging ----------------------------------------

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
    records = [{"id": f"{i}/{j}", "x": [i, j, 0.5]} for j in range(10)]
    seq = client.publish(Channel.PREDICTIONS, {"model": "e2e", "records": records})
    sys.stdout.write(f"{seq}\\n")
    sys.stdout.flush()
    i += 1
"""


def test_agent_sigkill_during_heavy_logging_loses_nothing_committed(
        broker: RestartableMosquitto, env: Env, ingestion: IngestionHandle,
        tmp_path: Path) -> None:
    device = new_device_id()
    state = tmp_path / "state"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), broker.url, device],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reported: list[int] = []  # seqs whose put() returned: committed
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        for line in child.stdout:
            reported.append(int(line))
            if len(reported) >= 2000 and count(env, "ingest_predictions", device) > 0:
                break
            assert time.monotonic() < deadline, "the child's messages never reached the server"
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
        pending = [s for (s,) in db.execute("SELECT seq FROM outbox ORDER BY seq")]
    finally:
        db.close()
    assert pending, "nothing was pending at the kill: the test proves nothing"
    committed = sorted(set(pending) | set(reported))

    client = TelemetryClient(device, BrokerConfig.from_url(broker.url), state, FAST)
    client.start()
    try:
        assert client.wait_drained(60)

        def stored_seqs() -> set[int]:
            return {seq for seq, _ in stored(env, device)}

        wait_until(lambda: stored_seqs() >= set(committed), timeout_s=30,
                   what="every committed message in the database")
    finally:
        client.stop()
    assert ingestion.ingester.wait_idle(10)  # late re-sends (duplicates) land first
    rows = stored(env, device)
    per_record = Counter(rows)
    assert max(per_record.values()) == 1, "a record was stored twice"
    per_seq = Counter(seq for seq, _ in rows)
    assert all(per_seq[s] == 10 for s in committed), "a committed message lost records"
    seqs = [seq for seq, _ in rows]
    assert seqs == sorted(seqs), "seq order broken in the database"


# -- 3. drift alert from real daemons ----------------------------------------------------

FEATURES = ["f0", "f1"]


def register_model(env: Env, root: Path) -> tuple[Path, Path]:
    """The two-feature linear ONNX model (y = f0 + f1) and its reference profile, also
    registered as MODEL VERSION in the server's registry."""
    model = write_onnx(root / "model.onnx")
    x = np.random.default_rng(12345).normal(size=(20_000, 2)).astype(np.float32)
    profile = ReferenceProfile.build(x, FEATURES, x.sum(axis=1, keepdims=True), ["y"])
    profile_path = root / "model.profile.json"
    profile_path.write_text(json.dumps(profile.to_dict()))
    registry_service(env.services).upload(
        MODEL, VERSION, io.BytesIO(model.read_bytes()),
        UploadMetadata(reference_profile=profile.to_dict()), SYSTEM)
    return model, profile_path


def start_daemon(stack: ExitStack, root: Path, model: Path, profile: Path,
                 broker: RestartableMosquitto, device: str) -> Daemon:
    root.mkdir()
    config = load_config(write_config(
        root / "agent.toml",
        {"state_dir": root / "state", "listen": "127.0.0.1:0", "flush_interval_s": 0.05,
         "window_s": 1.0, "heartbeat_s": 1.0},
        [{"name": MODEL, "path": model, "version": VERSION, "reference_profile": profile,
          "sample_rate": 0.0}],
        {"telemetry": {"enabled": True}}))
    daemon = Daemon(config, broker=BrokerConfig.from_url(broker.url), device_id=device)
    daemon.start()
    stack.callback(daemon.stop)
    return daemon


def serve(daemon: Daemon, seed: int, rows: int, scale_f0: float = 1.0) -> None:
    """Predict ``rows`` rows in batches, then flush and close the drift window."""
    rng = np.random.default_rng(seed)
    for _ in range(rows // 250):
        x = rng.normal(size=(250, 2)).astype(np.float32)
        x[:, 0] *= scale_f0
        daemon.predict(MODEL, {"x": x})
    assert daemon.predlog is not None
    daemon.predlog.flush()
    daemon.predlog.close_window()


def window_rows(env: Env, device: str) -> int:
    (n,) = env.services.store.db.execute(
        "SELECT COALESCE(SUM(n), 0) FROM drift_windows WHERE device_id = ?",
        [device]).fetchone()
    return int(n)


def test_drift_alert_from_real_agents(broker: RestartableMosquitto, env: Env,
                                      ingestion: IngestionHandle, tmp_path: Path) -> None:
    model, profile = register_model(env, tmp_path)
    stationary = [new_device_id(), new_device_id()]
    shifted = new_device_id()
    per_phase = 2000
    with ExitStack() as stack:
        daemons = {d: start_daemon(stack, tmp_path / d, model, profile, broker, d)
                   for d in [*stationary, shifted]}
        for k, daemon in enumerate(daemons.values()):
            serve(daemon, seed=100 + k, rows=per_phase)
        shift_at = time.time()
        serve(daemons[shifted], seed=200, rows=per_phase, scale_f0=1.5)
        for k, device in enumerate(stationary):
            serve(daemons[device], seed=300 + k, rows=per_phase)
        wait_until(lambda: all(window_rows(env, d) == 2 * per_phase for d in daemons),
                   timeout_s=30, what="every drift window in drift_windows")

    for _, _, evaluate in jobs(env.services):  # the server's scheduled evaluation job
        evaluate()

    def get(path: str) -> Any:
        rv = env.client.get(f"/api/v1{path}", headers=env.auth(Role.VIEWER))
        assert rv.status_code == 200, (path, rv.status_code, rv.json)
        return rv.json

    open_device_alerts = get("/drift/alerts?status=open&scope=device")["items"]
    assert {a["scope_id"] for a in open_device_alerts} == {shifted}
    (alert,) = open_device_alerts
    assert (alert["model"], alert["version"]) == (MODEL, VERSION)
    assert "f0" in alert["drifted"] and "f1" not in alert["drifted"]
    for device in stationary:
        assert get(f"/drift/alerts?scope=device&id={device}")["total"] == 0

    query = f"/drift?model={MODEL}&version={VERSION}&scope=device"
    report = get(f"{query}&id={shifted}&since={shift_at}")
    assert report["windows"] >= 1 and report["predictions"] == per_phase
    assert report["status"] == "over" and "f0" in report["drifted"]
    columns = {c["name"]: c for c in report["columns"]}
    assert columns["f0"]["status"] == "over"
    assert report["open_alert"] == alert["id"]
    for device in stationary:
        calm = get(f"{query}&id={device}&since=0")
        assert calm["predictions"] == 2 * per_phase
        assert calm["status"] != "over" and calm["drifted"] == []
