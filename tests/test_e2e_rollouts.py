"""Issue "staged rollouts", with real parts only: a real ``edgefleet server run`` on the
session's Mosquitto, five ``edgefleet agent run`` processes that enrolled with ``agent
enroll`` and serve a real ONNX model to a load generator over their local HTTP API, and
releases built and published with the shipped commands.

One fleet lives through four rollouts in a row:

1. a good release goes canary -> 100 % and every device reports it installed;
2. a release whose outputs are shifted installs fine but is stopped at the canary wave by
   the output-drift gate and rolled back automatically, the numbers in the audit log;
3. a release that fails warm-up is rolled back by the device and the rollout pauses;
4. the server is SIGKILLed mid-rollout and, restarted, resumes where it was.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgefleet.tools.modelgen import onnx_models
from tests.agent.daemon.support import write_config
from tests.conftest import BrokerEndpoint, free_port
from tests.fleet_server.test_server_process import CLI, ServerProcess, _env

WAIT_S = 90.0
N_DEVICES = 5
FEATURES = 8
# The latency gate is off: the p95 of a sub-millisecond model call on a shared 2-core
# machine is scheduling noise (the gate's arithmetic is covered by the policy and
# observer tests). Nobody sends labels, so the accuracy gate is off too.
GATES = {"min_predictions": 150, "max_output_psi": 0.25, "max_output_js": 0.1,
         "max_input_psi": 0.25, "max_latency_p95_ratio": None, "max_accuracy_drop": None,
         "min_shadow_agreement": None, "lost_after_s": 60}


def _cli(*args: str) -> str:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=WAIT_S,
                          env=_env(), check=False)
    assert proc.returncode == 0, f"edgefleet {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _start_server(data: Path, port: int, broker: BrokerEndpoint) -> ServerProcess:
    proc = subprocess.Popen(
        [*CLI, "server", "run", "--data-dir", str(data), "--port", str(port),
         "--mqtt-url", broker.url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=_env(EDGEFLEET_LOG_LEVEL="info"))
    server = ServerProcess(proc, port, broker.port)
    threading.Thread(target=server._pump, daemon=True).start()
    if not server.ready.wait(WAIT_S) or proc.poll() is not None:
        server.stop()
        raise AssertionError(f"server did not start:\n{server.output}")
    return server


@dataclass
class Agent:
    device_id: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Fleet:
    api: str
    auth: dict[str, str]
    agents: list[Agent]

    def get(self, path: str) -> Any:
        rv = requests.get(self.api + path, headers=self.auth, timeout=WAIT_S)
        assert rv.status_code == 200, rv.text
        return rv.json()

    def post(self, path: str, body: Any, expect: int = 200) -> Any:
        rv = requests.post(self.api + path, json=body, headers=self.auth, timeout=WAIT_S)
        assert rv.status_code == expect, rv.text
        return rv.json()

    def rollout(self, version: str, from_version: str, **spec: Any) -> int:
        body = {"model": "clf", "version": version, "from_version": from_version,
                "target": {"group": "fleet"}, "waves": [0.2, 1.0], "bake_s": 3,
                "max_extension_s": 60, "gates": GATES} | spec
        return int(self.post("/rollouts", body, expect=201)["id"])

    def wait(self, rollout_id: int, ok: Callable[[dict[str, Any]], bool],
             timeout_s: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        view = self.get(f"/rollouts/{rollout_id}")
        while not ok(view) and time.monotonic() < deadline:
            time.sleep(0.5)
            view = self.get(f"/rollouts/{rollout_id}")
        assert ok(view), json.dumps(view, indent=1)
        return dict(view)

    def running(self, device_id: str) -> str | None:
        """The version the device serves, from its last heartbeat."""
        beat = (self.get(f"/devices/{device_id}/telemetry").get("heartbeat") or {})
        models = (beat.get("body") or {}).get("models", {})
        return models.get("clf", {}).get("version")


def _load(agents: list[Agent], stop: threading.Event) -> None:
    """Local applications: every agent gets a steady stream of predictions."""
    rng = np.random.default_rng(7)
    session = requests.Session()
    while not stop.is_set():
        for agent in agents:
            rows = rng.uniform(-1, 1, size=(16, FEATURES)).astype(np.float32).tolist()
            # an agent restarting its model: the next round gets through
            with contextlib.suppress(requests.RequestException):
                session.post(f"{agent.url}/v1/predict", timeout=10,
                             json={"model": "clf", "inputs": {"input": rows}})
        time.sleep(0.02)


@pytest.fixture
def world(tmp_path: Path, mosquitto: BrokerEndpoint) -> Iterator[tuple[Fleet, Path, Any]]:
    data, offline = tmp_path / "server", tmp_path / "offline"
    _cli("server", "init", "--data-dir", str(data))
    _cli("keys", "init", "--data-dir", str(data), "--offline-dir", str(offline))
    token = _cli("server", "token", "create", "--data-dir", str(data), "--role", "operator",
                 "--name", "e2e").strip()

    base = onnx_models.mlp(tmp_path / "base.onnx", sizes=(FEATURES, 16, 3), seed=3)
    shifted = onnx_models.mlp(tmp_path / "shifted.onnx", sizes=(FEATURES, 16, 3), seed=11)
    x = np.random.default_rng(0).uniform(-1, 1, size=(2000, FEATURES)).astype(np.float32)
    np.save(tmp_path / "reference.npy", x)
    releases = tmp_path / "releases"
    releases.mkdir()
    for version, spec, extra in (("1.0.0", base, ()), ("1.1.0", base, ()),
                                 ("1.2.0", shifted, ()),
                                 ("1.3.0", base, ("--latency-budget-ms", "0.001")),
                                 ("1.4.0", base, ())):
        bundle = _cli("release", "build", str(spec.path), "--name", "clf", "--version",
                      version, "--reference", str(tmp_path / "reference.npy"), *extra,
                      "-o", str(releases)).strip().splitlines()[-1]
        _cli("release", "publish", bundle, "--data-dir", str(data), "--offline-dir",
             str(offline))

    port = free_port()
    server = _start_server(data, port, mosquitto)
    api = server.url
    auth = {"Authorization": f"Bearer {token}"}
    fleet = Fleet(api, auth, [])
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"):
        fleet.post(f"/models/clf/versions/{version}/stage", {"stage": "staging"})
    # Devices bin their drift windows with the reference profile of the release they
    # were set up with; every later version is compared on those same bins.
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(fleet.get("/models/clf/versions/1.0.0")["reference_profile"]))
    fleet.post("/device-groups", {"name": "fleet"}, expect=201)
    stop = threading.Event()
    holder: dict[str, Any] = {"server": server, "port": port, "data": data,
                              "broker": mosquitto}
    try:
        for i in range(N_DEVICES):
            enrollment = fleet.post("/enrollment-tokens", {"ttl_s": 600, "group": "fleet"},
                                    expect=201)
            state = tmp_path / f"dev{i}"
            _cli("agent", "enroll", "--server", api.removesuffix("/api/v1"), "--token",
                 enrollment["token"], "--state-dir", str(state))
            device_id = json.loads((state / "enrollment.json").read_text())["device_id"]
            listen = free_port()
            config = write_config(
                tmp_path / f"agent{i}.toml",
                {"state_dir": state, "listen": f"127.0.0.1:{listen}", "window_s": 1,
                 "heartbeat_s": 1, "flush_interval_s": 0.1},
                [{"name": "clf", "path": base.path, "version": "1.0.0",
                  "reference_profile": profile, "sample_rate": 0.0}],
                {"telemetry": {"enabled": True},
                 "updates": {"enabled": True, "model": "clf", "interval_s": 2}})
            log = tmp_path / f"agent{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([*CLI, "agent", "run", "--config", str(config)],
                                        stdout=out, stderr=subprocess.STDOUT, env=_env())
            fleet.agents.append(Agent(device_id, f"http://127.0.0.1:{listen}", proc, log))
        for agent in fleet.agents:
            _wait_http(agent)
        threading.Thread(target=_load, args=(fleet.agents, stop), daemon=True).start()
        yield fleet, tmp_path, holder
    finally:
        stop.set()
        for agent in fleet.agents:
            agent.proc.send_signal(signal.SIGTERM)
        for agent in fleet.agents:
            try:
                agent.proc.wait(30)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
        holder["server"].stop()


def _wait_http(agent: Agent) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            raise AssertionError(f"agent exited:\n{agent.log.read_text()}")
        try:
            if requests.get(f"{agent.url}/v1/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"agent never answered:\n{agent.log.read_text()}")


@pytest.mark.slow
def test_rollouts_with_real_agents(world: tuple[Fleet, Path, Any]) -> None:
    fleet, _, holder = world
    devices = [a.device_id for a in fleet.agents]

    # 1. a good release: canary, then everyone; every device reports it installed.
    # (with the CLI an operator uses)
    cli_auth = ("--server", fleet.api.removesuffix("/api/v1"), "--token",
                fleet.auth["Authorization"].removeprefix("Bearer "))
    out = _cli("rollout", "create", "--model", "clf", "--version", "1.1.0", "--from-version",
               "1.0.0", "--group", "fleet", "--waves", "0.2,1", "--bake", "3",
               "--max-extension", "60", "--gates", json.dumps(GATES), *cli_auth)
    good = int(out.splitlines()[0])
    view = fleet.wait(good, lambda v: v["status"] != "running")
    shown = _cli("rollout", "show", str(good), "--decisions", *cli_auth)
    assert "[completed]" in shown and "install_failure_rate" in shown, shown
    assert view["status"] == "completed", json.dumps(view, indent=1)
    assert view["device_states"] == {"installed": N_DEVICES}
    _until(lambda: {fleet.running(d) for d in devices} == {"1.1.0"}, "all on 1.1.0")
    gates = {g["name"]: g for g in view["gates"]}
    assert gates["output_psi"]["status"] == "pass", gates
    actions = [d["action"] for d in fleet.get(f"/rollouts/{good}/decisions")["items"]]
    assert actions.count("advance") == 1 and actions[-1] == "complete", actions

    # 2. shifted outputs: stopped at the canary wave by the output-drift gate, rolled back.
    bad = fleet.rollout("1.2.0", "1.1.0", on_failure="rollback")
    view = fleet.wait(bad, lambda v: v["status"] != "running")
    assert view["status"] == "rolled_back", json.dumps(view, indent=1)
    assert view["wave"] == 0  # never left the canary wave
    failed = [g for g in view["gates"] if g["status"] == "fail"]
    assert any(g["name"] in ("output_psi", "output_js") for g in failed), view["gates"]
    (canary,) = [d["device_id"] for d in
                 fleet.get(f"/rollouts/{bad}/devices?wave=0")["items"]]
    audit = fleet.get("/audit?action=rollout.rollback")["items"][0]
    assert audit["actor"]["kind"] == "system"
    psi = next(g for g in audit["after"]["gates"] if g["name"] == "output_psi")
    assert psi["value"] > psi["threshold"]
    _until(lambda: fleet.running(canary) == "1.1.0", "canary back on 1.1.0")

    # 3. fails warm-up on the device: the device rolls back, the rollout pauses.
    broken = fleet.rollout("1.3.0", "1.1.0")
    view = fleet.wait(broken, lambda v: v["status"] != "running")
    assert view["status"] == "paused", json.dumps(view, indent=1)
    assert view["wave"] == 0
    states = view["device_states"]
    assert states.get("failed", 0) + states.get("rolled_back", 0) == 1, states
    assert {fleet.running(d) for d in devices} == {"1.1.0"}
    fleet.post(f"/rollouts/{broken}/abort", {"reason": "broken build"})

    # 4. the server is killed mid-rollout and resumes where it was.
    resumed = fleet.rollout("1.4.0", "1.1.0", waves=[0.2, 0.6, 1.0])
    fleet.wait(resumed, lambda v: v["wave"] >= 1)
    server: ServerProcess = holder["server"]
    server.stop(signal.SIGKILL)
    holder["server"] = _start_server(holder["data"], holder["port"], holder["broker"])
    view = fleet.wait(resumed, lambda v: v["status"] != "running", timeout_s=2 * WAIT_S)
    assert view["status"] == "completed", json.dumps(view, indent=1)
    _until(lambda: {fleet.running(d) for d in devices} == {"1.4.0"}, "all on 1.4.0")
    log = fleet.get(f"/rollouts/{resumed}/decisions")["items"]
    assert [d["wave"] for d in log if d["action"] == "advance"] == [0, 1], log


def _until(ok: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.5)
