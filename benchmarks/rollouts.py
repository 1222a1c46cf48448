"""(g) Staged rollouts at fleet scale: a real server, an external Mosquitto, 10,000
simulated devices (quick mode: 200) and one rollout driven to completion.

* Mosquitto (``/usr/sbin/mosquitto``) on a free loopback port, **anonymous access
  allowed** (the load setup: per-device credentials and ACLs are tested in
  tests/fleet_server/broker), ``max_queued_messages 0``, no persistence.
* The fleet server as a separate process, set up with the real commands:
  ``edgefleet server init``, ``edgefleet keys init``, ``edgefleet release publish`` of two
  bundles of the same small MLP (``bench`` 1.0.0 and 2.0.0, built with
  :func:`edgefleet.tools.release.build_release` from the same reference data, so both
  versions carry the same drift profile), an admin token from ``edgefleet server token
  create``, then ``edgefleet server run --mqtt-url``.
* Devices are registered through the real API: per device one enrollment token
  (``POST /enrollment-tokens``, group ``bench``) and ``POST /enroll`` with a fresh Ed25519
  public key, from a few client threads; the time it took is printed.
* The simulator (:mod:`edgefleet.tools.simulate`) runs in this process on its own
  thread: one MQTT connection per enrolled device (the server-assigned ids), all on one
  ``selectors`` selector. Heartbeats and drift windows every ``PERIOD_S`` seconds.
* The rollout: ``POST /api/v1/rollouts`` for the whole group, 1.0.0 → 2.0.0, the default
  waves (1 %, 10 %, 50 %, 100 %), ``bake_s`` = ``BAKE_S``, polled with
  ``GET /api/v1/rollouts/{id}`` until it is no longer running.

Figures: the policy evaluation tick as the server measures it (``ticks`` of the rollout:
observe + decide, p50 and max, goal ≤ 200 ms; the detail adds the evaluations that
observed every gate, ``full_ticks`` (inside the bake time only the install and lost-device
gates are observed), the whole scheduler tick with carry-out, ``scheduler_ticks``, and the
director signing, ``carry_out``: per-device cost, batches, the longest hold of the rollouts
lock), the whole rollout's wall time (goal: waves × (bake + 30 s)),
the server's peak RSS (``VmHWM`` of its process, goal ≤ 500 MB) and the messages per
second the server ingested during the rollout (``GET /api/v1/ingest/stats`` ``accepted``;
goal: at least 95 % of what the simulator published in the same time, i.e. it keeps up).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.figures import Figure, Goal
from benchmarks.settings import Settings
from benchmarks.telemetry import _free_port, _host_port, _mosquitto, _wait_for_port

log = logging.getLogger(__name__)

MODEL = "bench"
OLD, NEW = "1.0.0", "2.0.0"
GROUP = "bench"
DEVICES = 10_000
ENROLL_THREADS = 8
API_SAMPLE = 1000  # enrollments through the API before deciding (see _enroll)
ENROLL_BUDGET_S = 120.0
TICK_GOAL_MS = 200.0
RSS_GOAL_MB = 500.0
EDGEFLEET = [sys.executable, "-m", "edgefleet.tools.cli"]


def _quick(settings: Settings) -> bool:
    return settings.heavy_iterations < Settings().heavy_iterations


@dataclass(frozen=True)
class Plan:
    """How big and how fast (times in seconds).

    Attributes:
        devices: simulated devices, all in the rollout.
        heartbeat_s, window_s: heartbeat and drift window periods of every device (the
            agent's defaults: 10,000 devices every 10 s overflow the server's ingestion
            queue on a 2-core machine, and dropped update events stall the rollout).
        predictions_per_s: per device (rows per drift window = rate × window).
        labeled_share: share of predictions that get a feedback label (the accuracy gate).
        bake_s: the rollout's bake time per wave.
        install_delay_s: desired hint to ``committed`` on a device.
        waves: cumulative fractions (None: the server's default 1 %, 10 %, 50 %, 100 %).
        timeout_s: give up waiting for the rollout to finish.
        gates: gate threshold overrides. ``min_labels`` 1,000: with the default 100 the
            canary's first heartbeats (a few labels per device, rounded per device) put
            the accuracy of an identical model several points off by chance, past the
            2-point gate (measured: 83 % vs 90 % over 100 labels, and a paused run).
    """

    devices: int = DEVICES
    heartbeat_s: float = 30.0
    window_s: float = 60.0
    predictions_per_s: float = 2.0
    labeled_share: float = 0.5
    bake_s: float = 30.0
    install_delay_s: float = 2.0
    waves: tuple[float, ...] | None = None
    timeout_s: float = 900.0
    gates: tuple[tuple[str, Any], ...] = (("min_labels", 1000),)

    @classmethod
    def quick(cls) -> Plan:
        """A smoke run: 100 devices, two waves, short periods."""
        return cls(devices=100, heartbeat_s=2.0, window_s=2.0, predictions_per_s=50.0,
                   bake_s=2.0,
                   install_delay_s=0.5, waves=(0.1, 1.0), timeout_s=120.0)


def _cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([*EDGEFLEET, *args], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"edgefleet {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc.stdout


# -- setup ---------------------------------------------------------------------------------


def _releases(workdir: Path) -> tuple[list[Path], dict[str, Any]]:
    """Two bundles of one small MLP with the same reference data; the drift profile."""
    from edgefleet.tools.modelgen import onnx_models
    from edgefleet.tools.release import build_release

    (workdir / "dist").mkdir()
    spec = onnx_models.mlp(workdir / "bench.onnx", sizes=(4, 16, 3), seed=3)
    reference = workdir / "reference.npy"
    rng = np.random.default_rng(5)
    np.save(reference, rng.uniform(-1, 1, size=(2000, 4)).astype(np.float32))
    bundles, profile = [], None
    for version, parent in ((OLD, None), (NEW, OLD)):
        report = build_release(spec.path, workdir / "dist", name=MODEL, version=version,
                               reference=reference, parent=parent)
        bundles.append(report.path)
        profile = dict(report.manifest.reference_profile)
    assert profile is not None
    return bundles, profile


@dataclass
class _Server:
    data_dir: Path
    url: str
    token: str
    proc: subprocess.Popen[bytes]

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, f"{self.url}/api/v1{path}", timeout=60,
                                    headers={"Authorization": f"Bearer {self.token}"},
                                    **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


@contextmanager
def _server(workdir: Path, mqtt_url: str, bundles: list[Path]) -> Iterator[_Server]:
    data, offline = workdir / "server", workdir / "offline-keys"
    _cli("server", "init", "--data-dir", str(data))
    _cli("keys", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    for bundle in bundles:
        _cli("release", "publish", str(bundle), "--data-dir", str(data), "--offline-dir",
             str(offline))
    token = _cli("server", "token", "create", "--data-dir", str(data), "--role", "admin",
                 "--name", "bench").strip()
    port = _free_port()
    log_file = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [*EDGEFLEET, "server", "run", "--data-dir", str(data), "--host", "127.0.0.1",
         "--port", str(port), "--mqtt-url", mqtt_url],
        stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, 60)
        server = _Server(data, f"http://127.0.0.1:{port}", token, proc)
        for _ in range(100):  # the ingestion's MQTT session comes up after HTTP
            if server.api("GET", "/ingest/stats").get("connected", True):
                break
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


def _public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _enroll_api(server: _Server, first: int, count: int) -> dict[str, str]:
    """Enroll through the API: one token (group ``bench``) and one ``POST /enroll`` each."""
    local = threading.local()

    def one(i: int) -> tuple[str, str]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {server.token}"
        r = session.post(f"{server.url}/api/v1/enrollment-tokens", json={"group": GROUP},
                         timeout=60)
        r.raise_for_status()
        r = session.post(f"{server.url}/api/v1/enroll", timeout=60, json={
            "token": r.json()["token"], "public_key": _public_key(), "name": f"sim-{i}",
            "hardware": {"machine": "simulated"}})
        r.raise_for_status()
        body = r.json()
        return body["device_id"], body["broker"]["password"]

    with ThreadPoolExecutor(ENROLL_THREADS) as pool:
        return dict(pool.map(one, range(first, first + count)))


def _enroll_library(data_dir: Path, first: int, count: int) -> dict[str, str]:
    """Enroll with the library the API handler calls (``EnrollmentService``: the same
    token and device rows, the same audit records) on the server's database."""
    from edgefleet.fleet_server.audit import Actor, ActorKind, AuditLog
    from edgefleet.fleet_server.devices.enrollment import EnrollmentService
    from edgefleet.tools.cli.server import open_store

    store = open_store(data_dir)
    try:
        service = EnrollmentService(store, AuditLog(store))
        actor = Actor(ActorKind.SYSTEM, "bench", "rollouts-bench", "admin")
        out = {}
        for i in range(first, first + count):
            _, secret = service.create_token(actor, group=GROUP)
            result = service.enroll(secret, _public_key(), {"machine": "simulated"},
                                    f"sim-{i}")
            out[result.device_id] = result.broker_password
        return out
    finally:
        store.close()


def _enroll(server: _Server, data_dir: Path, count: int) -> tuple[dict[str, str], str]:
    """Register ``count`` devices in group ``bench``: through the API when
    ``API_SAMPLE`` enrollments show that all of them take under ``ENROLL_BUDGET_S``,
    otherwise the sample through the API and the rest with the library."""
    server.api("POST", "/device-groups", json={"name": GROUP})
    sample = min(count, API_SAMPLE)
    start = time.perf_counter()
    passwords = _enroll_api(server, 0, sample)
    api_s = time.perf_counter() - start
    projected = api_s * count / sample
    how = (f"{sample} through POST /enrollment-tokens + POST /enroll in {api_s:.1f} s "
           f"({sample / api_s:.0f}/s, {ENROLL_THREADS} client threads)")
    rest = count - sample
    if rest and projected <= ENROLL_BUDGET_S:
        start = time.perf_counter()
        passwords |= _enroll_api(server, sample, rest)
        total = api_s + time.perf_counter() - start
        return passwords, f"{count} devices enrolled through the API in {total:.0f} s"
    if rest:
        start = time.perf_counter()
        passwords |= _enroll_library(data_dir, sample, rest)
        how += (f"; all {count} would take ~{projected:.0f} s > {ENROLL_BUDGET_S:.0f} s, so "
                f"the other {rest} with EnrollmentService on the server's database in "
                f"{time.perf_counter() - start:.0f} s")
    return passwords, how


# -- the run -------------------------------------------------------------------------------


def _fleet(mqtt_url: str, passwords: dict[str, str], profile: dict[str, Any],
           plan: Plan) -> Any:
    from edgefleet.tools.simulate import (
        DeviceConfig,
        Fleet,
        FleetConfig,
        WindowSource,
        load_reference,
    )

    host, port = _host_port(mqtt_url)
    device = DeviceConfig(model=MODEL, version=OLD, heartbeat_s=plan.heartbeat_s,
                          window_s=plan.window_s, install_delay_s=plan.install_delay_s,
                          predictions_per_s=plan.predictions_per_s,
                          labeled_share=plan.labeled_share)
    windows = WindowSource(load_reference(profile), lambda v: 0.0,
                           rows=round(plan.predictions_per_s * plan.window_s))
    return Fleet(FleetConfig(host, port, len(passwords), ids=tuple(passwords),
                             passwords=passwords), device, windows)


def _wait(what: str, condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout_s:.0f} s")
        time.sleep(0.5)


def measure(workdir: Path, plan: Plan,
            gates: dict[str, Any] | None = None) -> Iterator[Figure]:
    """The section for ``devices`` devices (``gates``: overrides of the default gate
    thresholds, for experiments; the benchmark uses the defaults)."""
    from edgefleet.tools.simulate import LIBRARY
    from edgefleet.tools.simulate.fleet import raise_nofile_limit

    devices = plan.devices
    # Before Mosquitto starts, so it inherits the raised limit too.
    raise_nofile_limit(devices + 256)
    bundles, profile = _releases(workdir)
    _step("releases built")
    with _mosquitto(workdir) as mqtt_url, _server(workdir, mqtt_url, bundles) as server:
        for version in (OLD, NEW):
            server.api("POST", f"/models/{MODEL}/versions/{version}/stage",
                       json={"stage": "staging"})
        _step("server running")
        passwords, enrolled = _enroll(server, server.data_dir, devices)
        _step(enrolled)
        fleet = _fleet(mqtt_url, passwords, profile, plan)
        thread = threading.Thread(target=fleet.run, name="simulator", daemon=True)
        connect_start = time.monotonic()
        thread.start()
        try:
            _wait("all devices connected", lambda: fleet.stats().connected == devices, 600)
            connect_s = time.monotonic() - connect_start
            _step(f"{devices} devices connected in {connect_s:.1f} s")
            # a heartbeat (and with the default periods a window) from every device first
            time.sleep(max(plan.heartbeat_s, min(plan.window_s, 60.0)) * 1.1)
            yield from _rollout(server, fleet, plan, enrolled, connect_s, LIBRARY,
                                {**dict(plan.gates), **(gates or {})})
        finally:
            fleet.stop()
            thread.join(30)


def _rollout(server: _Server, fleet: Any, plan: Plan, enrolled: str, connect_s: float,
             library: str, gates: dict[str, Any]) -> Iterator[Figure]:
    devices = plan.devices
    before = server.api("GET", "/ingest/stats")
    sent_before = fleet.stats().published
    start = time.monotonic()
    rollout = server.api("POST", "/rollouts", json={
        "model": MODEL, "version": NEW, "from_version": OLD, "target": {"group": GROUP},
        "bake_s": plan.bake_s, "on_failure": "pause",
        **({"gates": gates} if gates else {}),
        **({"waves": list(plan.waves)} if plan.waves else {})})
    rid = rollout["id"]
    _step(f"rollout {rid} created")
    wave = -1
    while rollout["status"] == "running" and time.monotonic() - start < plan.timeout_s:
        time.sleep(1.0)
        rollout = server.api("GET", f"/rollouts/{rid}")
        if rollout.get("wave") != wave:
            wave = rollout.get("wave", wave)
            _step(f"rollout {rid}: wave {wave}, {fleet.stats().versions}")
    elapsed = time.monotonic() - start
    after = server.api("GET", "/ingest/stats")
    stats = fleet.stats()
    sent = stats.published - sent_before
    accepted = int(after["accepted"]) - int(before["accepted"])
    ticks = rollout.get("ticks") or {}
    waves = rollout.get("waves") or []
    setup = (f"registration: {enrolled}; connected in {connect_s:.0f} s; simulator: "
             f"{stats.devices} MQTT connections in one process ({library}), "
             f"heartbeat every {plan.heartbeat_s:g} s, drift window every "
             f"{plan.window_s:g} s at "
             f"{plan.predictions_per_s:g} predictions/s; "
             f"Mosquitto with anonymous access")
    status = rollout["status"]
    sched = rollout.get("scheduler_ticks") or {}
    full = rollout.get("full_ticks") or {}
    carry = rollout.get("carry_out") or {}
    tick_detail = (f"policy evaluation (observe + decide, no signing): {ticks.get('count', 0)} "
                   f"ticks over {devices} devices, p50 {ticks.get('p50_ms')} ms, max "
                   f"{ticks.get('max_ms')} ms, last {ticks.get('last_ms')} ms; of them "
                   f"{full.get('count', 0)} observed every gate (after the bake time): p50 "
                   f"{full.get('p50_ms')} ms, max {full.get('max_ms')} ms; whole "
                   f"scheduler tick (with carry-out; waves over "
                   f"{carry.get('inline_max', 200)} devices are signed in the background): "
                   f"p50 {sched.get('p50_ms')} ms, max {sched.get('max_ms')} ms; carry-out: "
                   f"{carry.get('signed')} assignments signed in {carry.get('batches')} "
                   f"batches, {carry.get('per_device_ms')} ms per device, slowest batch "
                   f"{carry.get('max_batch_ms')} ms, longest hold of the rollouts lock "
                   f"{carry.get('max_lock_ms')} ms; load average {os.getloadavg()[0]:.1f}")
    _step(tick_detail)
    yield Figure("rollouts.tick-p50", "policy evaluation tick, p50", _num(ticks, "p50_ms"),
                 "ms", TICK_GOAL_MS, Goal.AT_MOST, tick_detail)
    yield Figure("rollouts.tick-max", "policy evaluation tick, slowest", _num(ticks, "max_ms"),
                 "ms", TICK_GOAL_MS, Goal.AT_MOST, tick_detail)
    goal_s = max(1, len(waves)) * (plan.bake_s + 30.0)
    versions = ", ".join(f"{v}: {n}" for v, n in stats.versions.items())
    value = elapsed if status == "completed" else float("inf")
    yield Figure("rollouts.whole", f"whole rollout, {len(waves)} waves", value, "s", goal_s,
                 Goal.AT_MOST,
                 f"status {status}{_why(rollout)} after {elapsed:.0f} s (bake {plan.bake_s:g} s "
                 f"per wave, install {plan.install_delay_s:g} s); device versions {versions}, "
                 f"installs "
                 f"{stats.installs}; {setup}")
    yield Figure("rollouts.server-rss", "server peak RSS (VmHWM)", server.peak_rss_mb(), "MB",
                 RSS_GOAL_MB, Goal.AT_MOST, f"server process {server.proc.pid}, {devices} "
                 "devices, one rollout")
    ingest_rate = accepted / elapsed if elapsed > 0 else 0.0
    offered = sent / elapsed if elapsed > 0 else 0.0
    yield Figure("rollouts.ingest-rate", "messages/s ingested during the rollout", ingest_rate,
                 "msg/s", round(0.95 * offered, 1), Goal.AT_LEAST,
                 f"{accepted} accepted / {elapsed:.0f} s; the simulator published {sent} "
                 f"({offered:,.0f} msg/s; goal: 95 % of it); duplicates "
                 f"{int(after.get('duplicates', 0)) - int(before.get('duplicates', 0))}, "
                 f"rejected {_rejected(after) - _rejected(before)}, dropped (queue full) "
                 f"{_dropped(after) - _dropped(before)}")


def _why(rollout: dict[str, Any]) -> str:
    """The gates that stopped a rollout that did not complete."""
    if rollout.get("status") == "completed":
        return ""
    bad = [f"{g.get('name')}: {g.get('detail')}" for g in rollout.get("gates") or []
           if g.get("status") in ("fail", "insufficient")]
    return f" ({'; '.join(bad)})" if bad else ""


def _step(text: str) -> None:
    """Progress of the long setup, on stderr (the figures go to stdout)."""
    print(f"  [rollouts] {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def _num(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) else float("inf")


def _dropped(stats: dict[str, Any]) -> int:
    return sum(int(v) for k, v in stats.items() if "drop" in k and isinstance(v, int))


def _rejected(stats: dict[str, Any]) -> int:
    rejected = stats.get("rejected", 0)
    if isinstance(rejected, dict):
        return int(rejected.get("total", 0))
    return int(rejected)


def run(workdir: Path, settings: Settings) -> Iterator[Figure]:
    logging.getLogger("edgefleet").setLevel(logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="rollouts-", dir=workdir))
    yield from measure(base, Plan.quick() if _quick(settings) else Plan())


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.rollouts [--devices N] [--gates JSON] ...``: this section
    alone, with the plan's numbers as options (for experiments)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m benchmarks.rollouts")
    parser.add_argument("--devices", type=int, default=DEVICES)
    parser.add_argument("--quick", action="store_true", help="the quick plan")
    parser.add_argument("--heartbeat-s", type=float, default=Plan.heartbeat_s)
    parser.add_argument("--window-s", type=float, default=Plan.window_s)
    parser.add_argument("--bake-s", type=float, default=Plan.bake_s)
    parser.add_argument("--timeout-s", type=float, default=Plan.timeout_s)
    parser.add_argument("--gates", type=json.loads, default=None,
                        help="gate threshold overrides (JSON object), for experiments")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))  # clean up the subprocesses
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        plan = Plan.quick() if args.quick else Plan(
            devices=args.devices, heartbeat_s=args.heartbeat_s, window_s=args.window_s,
            bake_s=args.bake_s, timeout_s=args.timeout_s)
        for figure in measure(Path(tmp), plan, args.gates):
            print(figure.line(), flush=True)


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        main()
